"""An `Embedder` wrapper that embeds each distinct text once.

Identical texts in one call, in calls already running, and in earlier calls (bounded LRU) share one
embedding. Keys are BLAKE2b digests of the model id and text, so the cache holds 32 bytes per key
rather than the text.
"""

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Sequence

from parapet.embeddings.protocol import Embedder, Vector


def _key(model_id: str, text: str) -> bytes:
    digest = hashlib.blake2b(digest_size=32)
    digest.update(model_id.encode())
    digest.update(b"\0")
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.digest()


class CachedEmbedder:
    """Caches the vectors of `inner` for up to `max_entries` distinct texts (least recently used evicted)."""

    def __init__(self, inner: Embedder, max_entries: int = 50_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._inner = inner
        self._max_entries = max_entries
        self._entries: OrderedDict[bytes, Vector] = OrderedDict()
        self._in_flight: dict[bytes, asyncio.Future[Vector]] = {}
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
        cached: dict[bytes, Vector] = {}
        waiting: dict[bytes, asyncio.Future[Vector]] = {}
        mine: dict[bytes, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key in cached or key in waiting or key in mine:
                continue
            if key in self._entries:
                # Taken now: later computations may evict it before this call returns.
                cached[key] = self._entries[key]
                self._entries.move_to_end(key)
            elif key in self._in_flight:
                waiting[key] = self._in_flight[key]
            else:
                mine[key] = text
        self.misses += len(mine)
        self.hits += len(texts) - len(mine)
        found = cached | (await self._compute(mine) if mine else {})
        for key, future in waiting.items():
            # shield: a cancelled caller must not cancel the computation others wait for.
            found[key] = await asyncio.shield(future)
        return [found[key] for key in keys]

    async def _compute(self, mine: dict[bytes, str]) -> dict[bytes, Vector]:
        loop = asyncio.get_running_loop()
        futures = {key: loop.create_future() for key in mine}
        self._in_flight.update(futures)
        try:
            vectors = await self._inner.embed(list(mine.values()))
        except BaseException as error:
            for future in futures.values():
                if not future.done():
                    future.set_exception(error)
                    # Waiters re-raise it; a future nobody awaited must not warn.
                    future.exception()
            raise
        finally:
            for key in futures:
                self._in_flight.pop(key, None)
        computed: dict[bytes, Vector] = {}
        for (key, future), vector in zip(futures.items(), vectors, strict=True):
            self._store(key, vector)
            future.set_result(vector)
            computed[key] = vector
        return computed

    def _store(self, key: bytes, vector: Vector) -> None:
        self._entries[key] = vector
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
