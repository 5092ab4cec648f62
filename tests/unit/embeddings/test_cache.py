"""CachedEmbedder embeds each distinct text once, within a call, across concurrent calls and over time."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from parapet.embeddings import CachedEmbedder, EmbeddingUnavailable, Vector
from parapet.embeddings.minilm import MiniLmEmbedder


class CountingEmbedder:
    """Wraps the real model and records what reaches it."""

    def __init__(self, inner: MiniLmEmbedder) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []
        self.fail = False
        self.gate: asyncio.Event | None = None
        self.cancelled = 0
        self.called = asyncio.Event()

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        self.calls.append(list(texts))
        self.called.set()
        if self.gate is not None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if self.fail:
            raise EmbeddingUnavailable("down")
        # Synchronously: the session's model holds an asyncio.Lock, which binds to the first loop that waits on
        # it, and every test has a loop of its own.
        return self.inner.embed_sync(texts)

    async def started(self, calls: int) -> None:
        """Until ``calls`` calls reached the model (a task's first step comes one loop turn after it is made)."""
        while len(self.calls) < calls:
            self.called.clear()
            await self.called.wait()


@pytest.fixture
def counting(minilm: MiniLmEmbedder) -> CountingEmbedder:
    return CountingEmbedder(minilm)


async def test_identical_texts_in_one_call_are_embedded_once(counting: CountingEmbedder) -> None:
    cache = CachedEmbedder(counting)
    vectors = await cache.embed(["alpha", "beta", "alpha", "alpha"])
    assert counting.calls == [["alpha", "beta"]]
    assert vectors[0] == vectors[2] == vectors[3]
    assert vectors[0] != vectors[1]


async def test_repeated_texts_come_from_the_cache(counting: CountingEmbedder) -> None:
    cache = CachedEmbedder(counting)
    first = await cache.embed(["alpha", "beta"])
    second = await cache.embed(["beta", "gamma", "alpha"])
    assert counting.calls == [["alpha", "beta"], ["gamma"]]
    assert second[0] == first[1] and second[2] == first[0]
    assert (cache.hits, cache.misses) == (2, 3)


async def test_concurrent_calls_share_one_computation(counting: CountingEmbedder) -> None:
    cache = CachedEmbedder(counting)
    counting.gate = asyncio.Event()
    first = asyncio.create_task(cache.embed(["shared", "one"]))
    await asyncio.sleep(0)
    second = asyncio.create_task(cache.embed(["shared", "two"]))
    await asyncio.sleep(0)
    counting.gate.set()
    a, b = await asyncio.gather(first, second)
    assert counting.calls == [["shared", "one"], ["two"]]
    assert a[0] == b[0]


async def test_least_recently_used_entries_are_evicted(counting: CountingEmbedder) -> None:
    cache = CachedEmbedder(counting, max_entries=2)
    await cache.embed(["a", "b"])
    await cache.embed(["a"])  # a is now most recent
    await cache.embed(["c"])  # evicts b
    assert len(cache) == 2
    await cache.embed(["a", "b"])
    assert counting.calls[-1] == ["b"]


async def test_more_distinct_texts_than_capacity_still_answer(counting: CountingEmbedder) -> None:
    cache = CachedEmbedder(counting, max_entries=1)
    vectors = await cache.embed(["x1", "x2", "x3"])
    assert len(vectors) == 3 and len(cache) == 1


async def test_failures_propagate_and_are_not_cached(counting: CountingEmbedder) -> None:
    cache = CachedEmbedder(counting)
    counting.fail = True
    with pytest.raises(EmbeddingUnavailable):
        await cache.embed(["alpha"])
    counting.fail = False
    assert len(await cache.embed(["alpha"])) == 1
    assert counting.calls == [["alpha"], ["alpha"]]


async def test_a_cancelled_caller_does_not_cancel_the_computation_others_wait_for(
    counting: CountingEmbedder,
) -> None:
    """The caller that started a computation is cancelled (inference's exact cache hit, a client gone): the
    others asking for the same text get their vector. They raised CancelledError without being cancelled,
    and the gRPC call behind each got no status until its deadline."""
    cache = CachedEmbedder(counting)
    counting.gate = asyncio.Event()
    owner = asyncio.create_task(cache.embed(["shared question"]))
    await counting.started(1)
    other = asyncio.create_task(cache.embed(["shared question", "another"]))
    await counting.started(2)
    owner.cancel()
    await asyncio.sleep(0)
    counting.gate.set()
    shared, _ = await other
    assert owner.cancelled()
    assert counting.calls == [["shared question"], ["another"]] and counting.cancelled == 0
    assert shared == (await cache.embed(["shared question"]))[0]  # kept, computed once
    assert len(counting.calls) == 2


async def test_a_computation_nobody_waits_for_any_more_is_cancelled_and_a_new_caller_starts_afresh(
    counting: CountingEmbedder,
) -> None:
    cache = CachedEmbedder(counting)
    counting.gate = asyncio.Event()
    callers = [asyncio.create_task(cache.embed(["alpha"])) for _ in range(2)]
    await counting.started(1)
    await asyncio.sleep(0)
    for caller in callers:
        caller.cancel()
    await asyncio.gather(*callers, return_exceptions=True)
    await asyncio.sleep(0)
    assert counting.cancelled == 1, "the computation outlived every caller"
    counting.gate.set()
    assert len(await cache.embed(["alpha"])) == 1
    assert counting.calls == [["alpha"], ["alpha"]]


async def test_closing_stops_running_computations_and_their_waiters_fail_typed(
    counting: CountingEmbedder,
) -> None:
    cache = CachedEmbedder(counting)
    counting.gate = asyncio.Event()
    waiter = asyncio.create_task(cache.embed(["alpha"]))
    await counting.started(1)
    await cache.aclose()
    with pytest.raises(EmbeddingUnavailable):
        await waiter  # not CancelledError: the waiter itself was not cancelled
    assert counting.cancelled == 1
    assert [t for t in asyncio.all_tasks() if t.get_name() == "embedding"] == []
