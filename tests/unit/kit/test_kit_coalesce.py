"""kit.coalesce: items that waited together are merged, nothing is delayed, lost, reordered or left running."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator

import pytest

from parapet.kit import timeouts
from parapet.kit.coalesce import coalesced


def join(items: list[str]) -> list[str]:
    """Merge for text pieces: neighbours into one, except "|" which stays apart (like a summary)."""
    merged: list[str] = []
    run: list[str] = []
    for item in items:
        if item == "|":
            if run:
                merged.append("".join(run))
                run = []
            merged.append(item)
        else:
            run.append(item)
    if run:
        merged.append("".join(run))
    return merged


class Source:
    """Yields its items; ``pause`` seconds between them (0: all at once, never suspending); records its end."""

    def __init__(self, items: list[str], pause: float = 0.0, fail: Exception | None = None) -> None:
        self.items = items
        self.pause = pause
        self.fail = fail
        self.produced = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            for item in self.items:
                if self.pause:
                    await asyncio.sleep(self.pause)
                self.produced += 1
                yield item
            if self.fail is not None:
                raise self.fail
        finally:
            self.closed = True


async def collect(source: Source, *, busy: float = 0.0, lead: int = 0, limit: int = 256) -> list[str]:
    """What a consumer receives when each item keeps it busy for ``busy`` seconds (a slow send)."""
    received: list[str] = []
    async for item in coalesced(source, join, lead=lead, limit=limit):
        received.append(item)
        if busy:
            await asyncio.sleep(busy)
    return received


async def test_a_source_slower_than_its_consumer_gets_one_message_per_item() -> None:
    items = [f"t{i} " for i in range(10)]
    received = await collect(Source(items, pause=0.005))
    assert received == items


async def test_a_burst_behind_a_busy_consumer_goes_out_merged_after_the_first_item_alone() -> None:
    items = [f"t{i} " for i in range(20)]
    received = await collect(Source(items), busy=0.01)
    # The first item is not held back to be merged; everything produced while it was being sent is one.
    assert received == ["t0 ", "".join(items[1:])]


async def test_the_first_lead_items_are_not_read_ahead_so_each_goes_out_alone() -> None:
    items = [f"t{i} " for i in range(20)]
    source = Source(items)
    received: list[str] = []
    async for item in coalesced(source, join, lead=2):
        if len(received) < 2:
            # Nothing was read past this item while it was on its way (a send, here a sleep).
            await asyncio.sleep(0.01)
            assert source.produced == len(received) + 1
        received.append(item)
        await asyncio.sleep(0.01)
    # After them, as always: the next item finds the consumer idle and goes alone, the rest pile up behind it.
    assert received == ["t0 ", "t1 ", "t2 ", "".join(items[3:])]


async def test_merge_decides_what_stays_apart_and_order_is_kept() -> None:
    items = ["a", "b", "|", "c", "d", "|"]
    received = await collect(Source(items), busy=0.01)
    assert received == ["a", "b", "|", "cd", "|"]


async def test_an_error_of_the_source_comes_after_every_item_before_it() -> None:
    source = Source(["a", "b", "c"], fail=ValueError("broke"))
    received: list[str] = []
    with pytest.raises(ValueError, match="broke"):
        async for item in coalesced(source, join):
            received.append(item)
            await asyncio.sleep(0.01)
    assert "".join(received) == "abc"
    assert source.closed


async def test_a_consumer_that_stops_early_closes_the_source_and_leaves_no_task() -> None:
    source = Source([str(i) for i in range(1000)], pause=0.001)
    before = asyncio.all_tasks()
    stream = coalesced(source, join)
    async for _ in stream:
        break
    await stream.aclose()
    assert source.closed
    assert asyncio.all_tasks() == before


@pytest.mark.parametrize("busy", [0.0, 0.01], ids=["inside the stream", "outside it, during a send"])
async def test_cancelling_the_consumer_cancels_the_reader_and_closes_the_source(busy: float) -> None:
    # With ``busy`` the cancellation lands while the consumer awaits its send, outside this generator (the gRPC
    # case), and aclosing closes it.
    source = Source([str(i) for i in range(1000)], pause=0.001)
    started = asyncio.Event()

    async def consume() -> None:
        async with contextlib.aclosing(coalesced(source, join)) as stream:
            async for _ in stream:
                started.set()
                if busy:
                    await asyncio.sleep(busy)

    before = asyncio.all_tasks()
    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.closed
    assert asyncio.all_tasks() == before


async def test_the_reader_never_runs_more_than_limit_items_ahead_of_a_slow_consumer() -> None:
    source = Source([str(i % 10) for i in range(200)])
    consumed = 0
    ahead: list[int] = []
    async for item in coalesced(source, join, limit=8):
        consumed += len(item)
        await asyncio.sleep(0.002)  # a slow send, during which the reader runs ahead as far as it may
        ahead.append(source.produced - consumed)
    assert consumed == 200
    assert max(ahead) == 8


@pytest.mark.parametrize("error", [asyncio.CancelledError(), KeyError("gone")])
async def test_a_cancellation_or_any_error_of_the_source_itself_reaches_the_consumer(
    error: BaseException,
) -> None:
    source = Source(["a", "b"], fail=error)  # type: ignore[arg-type]
    received: list[str] = []
    with pytest.raises(type(error)):
        async for item in coalesced(source, join):
            received.append(item)
    assert received == ["a", "b"]


async def test_a_source_that_fails_during_the_lead_still_delivers_what_came_before() -> None:
    source = Source(["a"], fail=ValueError("early"))
    received: list[str] = []
    with pytest.raises(ValueError, match="early"):
        async for item in coalesced(source, join, lead=2):
            received.append(item)
    assert received == ["a"]


async def test_a_source_that_ignores_cancellation_does_not_hold_the_consumer_up() -> None:
    class Stubborn:
        def __init__(self) -> None:
            self.produced = 0

        async def __aiter__(self) -> AsyncIterator[str]:
            for index in range(10_000):
                with contextlib.suppress(asyncio.CancelledError):  # swallowed: the reader must still stop
                    await asyncio.sleep(0)
                self.produced += 1
                yield str(index % 10)

    source = Stubborn()
    stream = coalesced(source, join, limit=2)
    async for _ in stream:
        await asyncio.sleep(0.01)  # the reader fills up to its limit meanwhile
        break
    before = asyncio.all_tasks()
    await timeouts.within(5, stream.aclose())
    assert source.produced < 10
    assert asyncio.all_tasks() <= before


async def test_the_source_runs_in_the_consumers_context() -> None:
    seen: list[str] = []
    variable: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")

    async def source() -> AsyncIterator[str]:
        seen.append(variable.get())
        yield "x"

    variable.set("req-1")
    assert [item async for item in coalesced(source(), join)] == ["x"]
    assert seen == ["req-1"]


async def test_nonsense_limits_are_refused() -> None:
    for lead, limit in ((0, 0), (-1, 8)):
        with pytest.raises(ValueError):
            await coalesced(Source([]), join, lead=lead, limit=limit).__anext__()
