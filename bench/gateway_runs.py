"""Running the gateway benchmark's load generator (``bench.gateway_load``, a process per run) against targets, with
the targets' processes watched for memory and CPU meanwhile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.gateway_clients import Target
from bench.gateway_procs import PYTHON, MemorySampler, ProcessGroup, run_json, wait_settled
from bench.gateway_results import LoadRun, RunStats

GENERATOR = [PYTHON, "-m", "bench.gateway_load"]


@dataclass(frozen=True)
class Scenario:
    """One system under test: how to reach it with each upstream regime, and which processes are it."""

    key: str  # "a", "b", ...
    label: str
    instant: Target  # zero-latency upstream
    streaming: Target  # 50 ms to the first token, then 20 chunks over 200 ms
    processes: ProcessGroup


async def one_at_a_time(
    scenarios: list[Scenario], streaming: bool, count: int, warmup: int, log: Path
) -> dict[str, RunStats]:
    """Every scenario one stream at a time, interleaved request by request."""
    plan = {
        "mode": "sequential",
        "targets": [(s.streaming if streaming else s.instant).to_json() for s in scenarios],
        "count": count,
        "warmup": warmup,
    }
    per_call = 0.35 if streaming else 0.15
    result = await run_json(
        GENERATOR, plan, within=60 + (count + warmup) * len(scenarios) * per_call, log=log
    )
    return {s.key: RunStats.of(samples) for s, samples in zip(scenarios, result["samples"], strict=True)}


async def open_loop(
    scenario: Scenario, rate: float, seconds: float, log: Path
) -> tuple[LoadRun, dict[str, Any]]:
    """One open-loop run against the streaming upstream, the scenario's RSS sampled and its CPU counted."""
    await wait_settled(scenario.processes, within=30.0)  # the previous run's tail has drained
    plan = {"mode": "open", "target": scenario.streaming.to_json(), "rate": rate, "duration": seconds}
    before = scenario.processes.cpu_by_member()
    async with MemorySampler(scenario.processes) as memory:
        result = await run_json(GENERATOR, plan, within=seconds + 120, log=log)
    after = scenario.processes.cpu_by_member()
    used = {name: after[name] - before.get(name, 0.0) for name in after}
    run = LoadRun(
        rate=rate,
        stats=RunStats.of(result["samples"][0]),
        elapsed=float(result["elapsed"]),
        peak_rss=memory.peak,
        cpu_seconds=sum(used.values()),
        generator_cpu=float(result["generator_cpu"]),
        warmup=int(result["warmup"]),
        cpu_by_member=used,
    )
    return run, result
