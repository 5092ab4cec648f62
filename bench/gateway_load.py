"""The gateway benchmark's load generator: open-loop and one-at-a-time streaming requests, in a process of its own.

``python -m bench.gateway_load`` reads a JSON plan on stdin and writes one JSON result on stdout; the
orchestrator (``bench/gateway.py``) starts one such process per run, so the generator's CPU never competes with
the orchestrator's and its own use is measured (``getrusage``) and reported.

Open loop: request ``i`` is *scheduled* at ``start + i / rate`` and started then whether or not earlier ones
finished; its latency is measured from that scheduled time, not from when the event loop got round to it. A
system (or generator) that falls behind therefore shows the full wait its callers would have seen, instead of
quietly sending fewer requests (coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench.gateway_clients import Target, Timing, make_client
from parapet.kit import timeouts

# A stream is given this long from its scheduled start before it counts as failed; a collapsed system must
# not keep the run going for ever.
REQUEST_TIMEOUT_SECONDS = 30.0
WARMUP_STREAMS = 20  # an open-loop run's unrecorded first streams


@dataclass(frozen=True)
class Sample:
    """One request; times in seconds from its scheduled start (None when it failed before that point)."""

    scheduled: float  # offset from the start of the run
    first_token: float | None
    total: float | None
    overhead_ms: float | None  # what the system under test says it added (gateway trailing metadata), if any
    error: str | None


Call = Callable[[], Awaitable[Timing]]


async def _measure(call: Call, scheduled: float, origin: float) -> Sample:
    try:
        timing = await timeouts.within(
            REQUEST_TIMEOUT_SECONDS - max(0.0, time.perf_counter() - scheduled), call()
        )
    except TimeoutError:
        return Sample(scheduled - origin, None, None, None, "timeout")
    except Exception as exc:  # every failure is a sample: the report counts them by kind
        return Sample(scheduled - origin, None, None, None, _describe(exc))
    return Sample(
        scheduled - origin,
        timing.first_token - scheduled,
        timing.end - scheduled,
        timing.overhead_ms,
        None,
    )


def _describe(exc: BaseException) -> str:
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):  # a grpc.aio.AioRpcError: its message says which dependency
        return f"grpc {code().name}: {(details() or '')[:80]}"
    return type(exc).__name__


def schedule(rate: float, duration: float) -> list[float]:
    """Offsets (seconds from the start) at which an open-loop run at ``rate``/s for ``duration`` s starts
    its requests: evenly spaced, as a constant-rate arrival process."""
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    return [i / rate for i in range(round(rate * duration))]


async def open_loop(call: Call, rate: float, duration: float) -> list[Sample]:
    """Start ``call`` on the schedule of :func:`schedule`, never waiting for earlier calls."""
    origin = time.perf_counter() + 0.05  # a little head room so the first request is not already late
    tasks: list[asyncio.Task[Sample]] = []
    for offset in schedule(rate, duration):
        scheduled = origin + offset
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_measure(call, scheduled, origin)))
    return list(await asyncio.gather(*tasks))


# Unloaded means one stream on an otherwise idle machine: a target's work after its answer (Parapet settles,
# audits and bills in the background) must not land on the next target's stream, which it did back to back
# (each Parapet scenario then paid for the one before it).
SETTLE_PAUSE = 0.05


async def one_at_a_time(
    calls: list[Call], count: int, warmup: int, pause: float = SETTLE_PAUSE
) -> list[list[Sample]]:
    """``count`` rounds (after ``warmup`` unrecorded ones), each calling every one of ``calls`` in turn, one
    stream at a time, ``pause`` seconds apart. Interleaving the targets spreads any drift of the machine over
    all of them alike."""
    results: list[list[Sample]] = [[] for _ in calls]
    origin = time.perf_counter()
    for round_index in range(warmup + count):
        for index, call in enumerate(calls):
            if pause:
                await asyncio.sleep(pause)
            sample = await _measure(call, time.perf_counter(), origin)
            if round_index >= warmup:
                results[index].append(sample)
    return results


async def run(plan: dict[str, Any]) -> dict[str, Any]:
    """Carry out one plan: ``{"mode": "open", "target": {...}, "rate": r, "duration": s}`` or
    ``{"mode": "sequential", "targets": [{...}, ...], "count": n, "warmup": w}``."""
    wall = time.perf_counter()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    if plan["mode"] == "open":
        async with make_client(Target.from_json(plan["target"])) as client:
            # Connections up and warm before the clock starts.
            await one_at_a_time([client.stream], WARMUP_STREAMS, 0, pause=0.0)
            wall, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
            samples = [await open_loop(client.stream, float(plan["rate"]), float(plan["duration"]))]
    elif plan["mode"] == "sequential":
        targets = [Target.from_json(t) for t in plan["targets"]]
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(make_client(t)) for t in targets]
            samples = await one_at_a_time(
                [c.stream for c in clients], int(plan["count"]), int(plan["warmup"])
            )
    else:
        raise ValueError(f"unknown mode {plan['mode']!r}")
    used = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = time.perf_counter() - wall
    return {
        "samples": [[asdict(s) for s in per_target] for per_target in samples],
        "warmup": WARMUP_STREAMS if plan["mode"] == "open" else 0,
        "elapsed": elapsed,
        # Share of one core the generator itself used: near 1.0 it, not the target, may set the pace.
        "generator_cpu": (used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime) / elapsed,
    }


def cli() -> int:
    plan = json.loads(sys.stdin.read())
    result = asyncio.run(run(plan))
    sys.stdout.write(json.dumps(result))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
