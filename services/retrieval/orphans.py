"""Vectors no chunk row references, deleted in the background (the pgvector store only).

They are the garbage of a deletion whose vector delete failed after its rows were gone
(``deletion.forget_vectors``), of a replacement likewise, or of an ingestion that stopped between writing a
document's vectors and its chunk rows. No query returns them (queries re-read the chunk rows, and vector search
asks for more past them), but they hold the embeddings and metadata of deleted, even erased, documents, and each
one makes vector search read further. Pinecone has no such sweep: its vectors cannot be joined with the rows.
"""

from __future__ import annotations

import logging

from services.retrieval.stores.pgvector import OrphanSweep, PgVectorStore

log = logging.getLogger(__name__)


class OrphanSweeper:
    """Walks the pgvector table batch by batch, one batch per tick, back to the start at its end: every vector is
    looked at once per ``table size / batch`` ticks, at the cost of one indexed batch per tick."""

    def __init__(self, store: PgVectorStore, *, batch: int = 1000, grace_seconds: float = 3600.0) -> None:
        self._store = store
        self._batch = batch
        self._grace = grace_seconds
        self._after: tuple[str, str] | None = None
        self.swept = 0  # since start (tests, logs)

    async def tick(self) -> OrphanSweep:
        """One batch; ``next_after`` None when it reached the table's end (the next tick starts over)."""
        result = await self._store.sweep_orphans(self._after, self._batch, self._grace)
        self._after = result.next_after
        self.swept += result.swept
        if result.swept:
            log.info("vectors without a chunk row deleted", extra={"count": result.swept})
        return result
