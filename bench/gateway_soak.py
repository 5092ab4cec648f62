"""The soak (issue #10): Parapet's governed chat (retrieval off) under steady open-loop load for 10 minutes, every
service's RSS sampled every few seconds; memory must stay flat (within ±10 %). ``make bench-soak``.

Not found by ``make bench`` (it has no ``main``): it takes ten minutes of two busy cores and says nothing about
speed that the gateway benchmark does not, so it runs on its own, before a release or after a change to what
the flow keeps in memory. Knobs: ``BENCH_SOAK_SECONDS`` (default 600), ``BENCH_SOAK_RATE`` (default 50
requests/s: below the rate the gateway benchmark finds held, so queues stay short and what grows is what is
kept), ``BENCH_SOAK_INTERVAL`` (sampling, default 5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench.gateway import QUESTION
from bench.gateway_clients import Target
from bench.gateway_procs import (
    PYTHON,
    ProcessGroup,
    announced_child,
    rss_bytes,
    run_json,
    wait_settled,
)
from bench.gateway_results import RunStats
from bench.gateway_runs import GENERATOR
from bench.gateway_soak_summary import MemorySeries, summary_body
from bench.gateway_suite import STREAMING_MODEL, TENANT, parapet_suite, service_name
from bench.report import write_section
from parapet.kit import timeouts

SECONDS = float(os.environ.get("BENCH_SOAK_SECONDS", "600"))
RATE = float(os.environ.get("BENCH_SOAK_RATE", "50"))
INTERVAL = float(os.environ.get("BENCH_SOAK_INTERVAL", "5"))
COMMAND = "make bench-soak  # or: python -m bench.gateway_soak"


async def _sample(services: ProcessGroup, series: MemorySeries, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not stop.is_set():
        series.add(loop.time() - started, {service_name(pid): rss_bytes(pid) for pid in services.pids()})
        with contextlib.suppress(TimeoutError):
            await timeouts.within(INTERVAL, stop.wait())


async def soak(workdir: Path) -> str:
    log = workdir / "bench.log"
    async with announced_child(PYTHON, "-m", "parapet.upstream", log=log) as upstream:
        async with parapet_suite(str(upstream.announcement["base_url"]), workdir) as suite:
            await wait_settled(suite.services)
            target = Target(
                name="b",
                kind="gateway",
                address=suite.gateway_address,
                api_key=suite.api_keys[TENANT],
                model=STREAMING_MODEL,
                question=QUESTION,
            )
            series = MemorySeries()
            stop = asyncio.Event()
            sampler = asyncio.create_task(_sample(suite.services, series, stop))
            plan = {"mode": "open", "target": target.to_json(), "rate": RATE, "duration": SECONDS}
            try:
                result = await run_json(GENERATOR, plan, within=SECONDS + 300, log=log)
            finally:
                stop.set()
                await sampler
    return summary_body(series, RunStats.of(result["samples"][0]), RATE, SECONDS, INTERVAL)


async def run() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="parapet-bench-soak-"))
    print(f"logs under {workdir}; {SECONDS:g} s at {RATE:g} requests/s", flush=True)
    text = await soak(workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    write_section("gateway_soak", "Gateway soak: memory under steady load", COMMAND, text)
    print(text)


if __name__ == "__main__":
    asyncio.run(run())
    sys.exit(0)
