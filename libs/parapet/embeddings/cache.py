"""An `Embedder` wrapper that embeds each distinct text once.

Identical texts in one call, in calls already running, and in earlier calls (bounded LRU) share one
embedding. Keys are BLAKE2b digests of the model id and text, so the cache holds 32 bytes per key
rather than the text.

A computation belongs to no caller: it runs in a task of its own, and every caller that needs it (the one
that started it included) only waits for it. A cancelled caller stops waiting and nothing else; the
computation goes on while anyone still waits and is cancelled when the last waiter has gone, so it never
outlives its callers (nor the server that stops them). Before, the computation ran in the first caller's
task: its cancellation (an exact cache hit that no longer needed the vector, a client that went away) was
handed to every other caller of the same text, who raised CancelledError without being cancelled, and the
gRPC call behind each went without a status until its deadline.
"""

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from parapet.embeddings.protocol import Embedder, EmbeddingUnavailable, Vector


def _key(model_id: str, text: str) -> bytes:
    digest = hashlib.blake2b(digest_size=32)
    digest.update(model_id.encode())
    digest.update(b"\0")
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.digest()


@dataclass(eq=False)
class _Computation:
    """One call of the inner embedder for the texts of ``keys`` (in order), and how many callers wait for it."""

    keys: list[bytes]
    task: asyncio.Task[list[Vector]]
    waiters: int = 0


class CachedEmbedder:
    """Caches the vectors of `inner` for up to `max_entries` distinct texts (least recently used evicted)."""

    def __init__(self, inner: Embedder, max_entries: int = 50_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._inner = inner
        self._max_entries = max_entries
        self._entries: OrderedDict[bytes, Vector] = OrderedDict()
        # key -> the computation producing it, and the key's place in that computation's batch.
        self._in_flight: dict[bytes, tuple[_Computation, int]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def model_id(self) -> str:
        return self._inner.model_id

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    @property
    def inner(self) -> Embedder:
        return self._inner

    def __len__(self) -> int:
        return len(self._entries)

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        keys = [_key(self.model_id, text) for text in texts]
        found: dict[bytes, Vector] = {}
        needed: dict[bytes, tuple[_Computation, int]] = {}
        mine: dict[bytes, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key in found or key in needed or key in mine:
                continue
            if key in self._entries:
                # Taken now: later computations may evict it before this call returns.
                found[key] = self._entries[key]
                self._entries.move_to_end(key)
            elif key in self._in_flight:
                needed[key] = self._in_flight[key]
            else:
                mine[key] = text
        self.misses += len(mine)
        self.hits += len(texts) - len(mine)
        if mine:
            self._start(mine)
            needed.update({key: self._in_flight[key] for key in mine})
        found.update(await self._wait_for(needed))
        return [found[key] for key in keys]

    async def aclose(self) -> None:
        """Stop every computation still running (shutdown); their waiters get EmbeddingUnavailable."""
        running = list({computation for computation, _ in self._in_flight.values()})
        for computation in running:
            self._abandon(computation)
        await asyncio.gather(*(c.task for c in running), return_exceptions=True)

    def _start(self, mine: dict[bytes, str]) -> None:
        keys = list(mine)
        task = asyncio.get_running_loop().create_task(self._run(keys, list(mine.values())), name="embedding")
        computation = _Computation(keys, task)
        # A callback, not a `finally`: a task cancelled before its first step never runs its body.
        task.add_done_callback(lambda _: self._finished(computation))
        self._in_flight.update({key: (computation, i) for i, key in enumerate(computation.keys)})

    async def _run(self, keys: list[bytes], texts: list[str]) -> list[Vector]:
        vectors = await self._inner.embed(texts)
        for key, vector in zip(keys, vectors, strict=True):
            self._store(key, vector)
        return vectors

    def _finished(self, computation: _Computation) -> None:
        self._forget(computation)
        if not computation.task.cancelled():
            computation.task.exception()  # its waiters re-raise it; with none left it must not warn as lost

    async def _wait_for(self, needed: dict[bytes, tuple[_Computation, int]]) -> dict[bytes, Vector]:
        computations = {computation for computation, _ in needed.values()}
        for computation in computations:
            computation.waiters += 1
        try:
            results = {c: await self._result(c) for c in computations}
        finally:
            for computation in computations:
                computation.waiters -= 1
                if computation.waiters == 0 and not computation.task.done():
                    self._abandon(computation)  # nobody wants it any more
        return {key: results[computation][index] for key, (computation, index) in needed.items()}

    @staticmethod
    async def _result(computation: _Computation) -> list[Vector]:
        task = computation.task
        try:
            # shield: this caller's cancellation ends its wait, not the computation others wait for.
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or current.cancelling() == 0):
                # The computation was stopped (shutdown), this caller was not: a failure, not its cancellation.
                raise EmbeddingUnavailable("the embedding was stopped before it finished") from None
            raise

    def _abandon(self, computation: _Computation) -> None:
        # Out of the in-flight map at once: a caller arriving now starts afresh instead of joining it.
        self._forget(computation)
        computation.task.cancel()

    def _forget(self, computation: _Computation) -> None:
        for key in computation.keys:
            if self._in_flight.get(key, (None, 0))[0] is computation:
                del self._in_flight[key]

    def _store(self, key: bytes, vector: Vector) -> None:
        self._entries[key] = vector
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
