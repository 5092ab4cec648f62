"""The gateway benchmark's load generator: the open-loop schedule and latency from the scheduled start."""

from __future__ import annotations

import asyncio
import time

import pytest

from bench.gateway_clients import Timing
from bench.gateway_load import one_at_a_time, open_loop, schedule


def test_schedule_is_evenly_spaced_at_the_rate() -> None:
    offsets = schedule(200, 0.5)
    assert len(offsets) == 100
    assert offsets[0] == 0
    assert offsets[1] == pytest.approx(0.005)
    assert offsets[-1] == pytest.approx(0.495)


@pytest.mark.parametrize(("rate", "duration"), [(0, 1), (10, 0), (-5, 1)])
def test_schedule_refuses_nonsense(rate: float, duration: float) -> None:
    with pytest.raises(ValueError):
        schedule(rate, duration)


async def test_open_loop_starts_on_schedule_and_counts_waiting_in_a_slow_system() -> None:
    # A system that serves one request at a time, each taking 20 ms, at 100 requests/s: a closed-loop client
    # would see 20 ms each; callers arriving every 10 ms wait ever longer, and the open loop must show that.
    lock = asyncio.Lock()

    async def serial_system() -> Timing:
        async with lock:
            await asyncio.sleep(0.02)
            now = time.perf_counter()
            return Timing(now, now)

    samples = await open_loop(serial_system, rate=100, duration=0.2)
    assert len(samples) == 20
    assert [s.error for s in samples] == [None] * 20
    assert samples[1].scheduled - samples[0].scheduled == pytest.approx(0.01)
    totals = [s.total for s in samples]
    assert all(t is not None for t in totals)
    # The last caller waited for the 19 before it: about 20 * 20 ms - its own 190 ms offset = 210 ms.
    assert totals[-1] is not None and totals[-1] > 0.15
    assert totals[0] is not None and totals[0] < 0.1


async def test_failures_are_samples_with_their_kind() -> None:
    async def broken() -> Timing:
        raise ConnectionResetError("gone")

    samples = await open_loop(broken, rate=50, duration=0.1)
    assert [s.error for s in samples] == ["ConnectionResetError"] * 5
    assert all(s.total is None and s.first_token is None for s in samples)


async def test_one_at_a_time_interleaves_targets_and_drops_warmup() -> None:
    calls: list[str] = []

    def target(name: str):  # type: ignore[no-untyped-def]
        async def call() -> Timing:
            calls.append(name)
            now = time.perf_counter()
            return Timing(now, now + 0.001)

        return call

    results = await one_at_a_time([target("a"), target("b")], count=3, warmup=2)
    assert calls == ["a", "b"] * 5
    assert [len(r) for r in results] == [3, 3]
    assert all(s.total is not None and s.total >= 0.001 for r in results for s in r)
