"""Vectors no chunk row references, deleted in the background, with either store.

They are the garbage of a deletion whose vector delete failed after its rows were gone
(``deletion.forget_vectors``), of a replacement likewise, of a tenant erasure whose namespace delete failed
(Pinecone), or of an ingestion that stopped between writing a document's vectors and its chunk rows. No query
returns them (queries re-read the chunk rows, and vector search asks for more past them), but they hold the
embeddings and metadata of deleted, even erased, documents, and each one makes vector search read further.

An ingestion writes a document's vectors, then its chunk rows, so a vector without a row may be one it is about to
reference: only vectors nothing wrote for the grace period are deleted.
"""

from __future__ import annotations

import logging
import time

from parapet.kit.database import Database
from services.retrieval import repository
from services.retrieval.stores.pgvector import OrphanSweep, PgVectorStore
from services.retrieval.stores.pinecone_store import LIST_PAGE, PineconeStore

log = logging.getLogger(__name__)


def _log_swept(count: int) -> None:
    if count:
        log.info("vectors without a chunk row deleted", extra={"count": count})


class OrphanSweeper:
    """The pgvector store's sweep: walks the table batch by batch, one batch per tick, back to the start at its end:
    every vector is looked at once per ``table size / batch`` ticks, at the cost of one indexed batch per tick. The
    check and the delete are one statement (``PgVectorStore.sweep_orphans``)."""

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
        _log_swept(result.swept)
        return result


class PineconeOrphanSweeper:
    """The Pinecone store's sweep. Pinecone cannot join its vectors with the chunk rows, so each tick lists up to
    ``batch`` ids of one tenant's namespace (tenants in turn, back to the first after the last), asks PostgreSQL
    which of them a chunk row references, and reads the write time of the others (``WRITTEN_AT``, set by every
    upsert). Those written before the grace began are checked against the rows once more and deleted. A vector
    written before writes were stamped gets its stamp now, so it is deleted one grace period later.

    Not atomic, unlike the pgvector statement: an ingestion that rewrites a long-orphaned vector in the
    milliseconds between the write-time read and the delete, and references it, loses that vector (the chunk is
    then missing from vector search until the document is ingested again). The second row check narrows that
    window to the delete request itself."""

    def __init__(
        self, store: PineconeStore, database: Database, *, batch: int = 1000, grace_seconds: float = 3600.0
    ) -> None:
        self._store = store
        self._database = database
        self._batch = batch
        self._grace = grace_seconds
        self._tenants: list[str] = []  # still to walk in this round, the current one first
        self._token: str | None = None  # the current tenant's next page
        self.swept = 0  # since start (tests, logs)

    async def tick(self) -> OrphanSweep:
        """Up to ``batch`` ids of the current tenant; ``next_after`` None when the round reached its end (the next
        tick starts a new round with the tenants Pinecone has then)."""
        if not self._tenants:
            self._tenants, self._token = await self._store.namespaces(), None
            if not self._tenants:
                return OrphanSweep(swept=0, next_after=None)
        tenant = self._tenants[0]
        ids: list[str] = []
        while len(ids) < self._batch:
            page, self._token = await self._store.list_page(
                tenant, min(LIST_PAGE, self._batch - len(ids)), self._token
            )
            ids += page
            if self._token is None:
                break
        swept = await self._sweep(tenant, ids) if ids else 0
        if self._token is None:
            self._tenants.pop(0)
        self.swept += swept
        _log_swept(swept)
        more = bool(self._tenants)
        return OrphanSweep(swept=swept, next_after=(self._tenants[0], self._token or "") if more else None)

    async def _unreferenced(self, tenant: str, ids: list[str]) -> list[str]:
        # The sweep spans tenants, so it reads as the schema's owner (no caller, no RLS scope), as pgvector's does.
        async with self._database.transaction() as session:
            referenced = await repository.referenced_chunk_ids(session, tenant, ids)
        return [chunk_id for chunk_id in ids if chunk_id not in referenced]

    async def _sweep(self, tenant: str, ids: list[str]) -> int:
        candidates = await self._unreferenced(tenant, ids)
        if not candidates:
            return 0
        now = time.time()
        written = await self._store.write_times(tenant, candidates)
        await self._store.stamp_written(tenant, [i for i, at in written.items() if at is None], now)
        expired = [i for i, at in written.items() if at is not None and at < now - self._grace]
        if not expired:
            return 0
        expired = await self._unreferenced(tenant, expired)
        await self._store.delete_chunks(tenant, expired)
        return len(expired)
