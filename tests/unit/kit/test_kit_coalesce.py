"""kit.coalesce: items that waited together are merged, nothing is delayed, lost, reordered or left running."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

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
    received = await collect(Source(items), busy=0.01, lead=2)
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
    assert source.produced < 1000
    assert asyncio.all_tasks() == before


async def test_cancelling_the_consumer_cancels_the_reader_and_closes_the_source() -> None:
    source = Source([str(i) for i in range(1000)], pause=0.001)
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in coalesced(source, join):
            started.set()

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
        ahead.append(source.produced - consumed)
        await asyncio.sleep(0.001)
    assert consumed == 200
    assert max(ahead) <= 8
