"""The semantic cache's storage: exact match by question hash first, else nearest embedding above a threshold.

Every query is bound to one tenant (explicit filter plus row-level security), one access scope and one partition,
so an answer can only reach a caller who would have been given the same documents for the same kind of request.

Deleted documents leave tombstones (migration ``0004_document_tombstones``): an answer whose context was read
before one of its documents was deleted is neither stored nor served, however late it is written.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.embeddings import Embedder
from parapet.kit.database import Database
from services.inference.cache.keys import CacheKey, question_hash

# How long before its request reached inference a context may have been read: the gateway retrieves the chunks,
# then screens the input and reserves the budget, then calls inference. An entry counts as grounded in what its
# documents were this long before its request arrived, so a deletion in between keeps it out. The price: for this
# long after a document is replaced, answers grounded in its new content are not stored.
CONTEXT_AGE = timedelta(seconds=60)

# The tombstone document id that stands for every document of the tenant (a tenant erasure). Context chunks
# without a document id are never recorded as grounding, so no entry names it as a document.
EVERY_DOCUMENT = ""


@dataclass(frozen=True)
class NewEntry:
    """An answer to keep: ``user_id`` asked ``question`` at ``asked_at`` (``time.monotonic()``), grounded in
    ``document_ids``; ``model`` of ``provider`` answered."""

    question: str
    answer: str
    finish_reason: int
    model: str
    provider: str
    document_ids: Sequence[str]
    user_id: str
    asked_at: float


@dataclass(frozen=True)
class CachedAnswer:
    entry_id: str
    answer: str
    finish_reason: int
    model: str
    provider: str
    similarity: float
    exact: bool


def _vector_literal(vector: Sequence[float]) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in vector) + "]"


# An entry whose context was read before one of its documents (or the whole tenant: '' is EVERY_DOCUMENT) was
# deleted. Checked again on every read: a store and a deletion running at once may each commit without seeing the
# other.
_BURIED = """
    EXISTS (SELECT 1 FROM document_tombstones t
            WHERE t.tenant_id = cache_entries.tenant_id
              AND t.document_id = ANY(array_append(cache_entries.document_ids, ''))
              AND t.delete_time > cache_entries.context_time)
"""
_EXACT = text(
    f"""
    SELECT entry_id, answer, finish_reason, model, provider FROM cache_entries
    WHERE tenant_id = :tenant AND scope_key = :scope AND partition_key = :partition
      AND question_hash = :hash AND expire_time > now() AND NOT {_BURIED}
    ORDER BY create_time DESC LIMIT 1
    """
)
_NEAREST = text(
    f"""
    SELECT entry_id, answer, finish_reason, model, provider,
           1 - (embedding <=> CAST(:vector AS public.vector)) AS similarity
    FROM cache_entries
    WHERE tenant_id = :tenant AND scope_key = :scope AND partition_key = :partition
      AND embedding_model = :model AND expire_time > now() AND NOT {_BURIED}
    ORDER BY embedding <=> CAST(:vector AS public.vector) LIMIT 1
    """
)
# Inserts nothing when a document of the entry (or the tenant) was deleted after its context was read.
_INSERT = text(
    """
    INSERT INTO cache_entries (entry_id, tenant_id, scope_key, partition_key, question_hash, question, embedding,
                               embedding_model, answer, finish_reason, model, provider, document_ids, user_id,
                               context_time, expire_time)
    SELECT :id, :tenant, :scope, :partition, :hash, :question, CAST(:vector AS public.vector), :model, :answer,
           :finish, :answer_model, :provider, :documents, :user, now() - :context_age, now() + :ttl
    WHERE NOT EXISTS (SELECT 1 FROM document_tombstones
                      WHERE tenant_id = :tenant AND delete_time > now() - :context_age
                        AND document_id = ANY(array_append(CAST(:documents AS text[]), '')))
    """
)
_TOMBSTONE = text(
    """
    INSERT INTO document_tombstones (tenant_id, document_id, delete_time, expire_time)
    SELECT :tenant, document_id, now(), now() + :keep FROM unnest(CAST(:ids AS text[])) AS document_id
    ON CONFLICT (tenant_id, document_id)
    DO UPDATE SET delete_time = EXCLUDED.delete_time, expire_time = EXCLUDED.expire_time
    """
)

_EXPIRED_ENTRIES = text(
    "DELETE FROM cache_entries WHERE entry_id IN (SELECT entry_id FROM cache_entries"
    " WHERE expire_time <= now() ORDER BY expire_time LIMIT :n)"
)
_EXPIRED_TOMBSTONES = text(
    "DELETE FROM document_tombstones WHERE (tenant_id, document_id) IN (SELECT tenant_id, document_id"
    " FROM document_tombstones WHERE expire_time <= now() ORDER BY expire_time LIMIT :n)"
)


class SemanticCache:
    def __init__(
        self,
        database: Database,
        embedder: Embedder,
        *,
        threshold: float,
        ttl_seconds: float,
        fallback_threshold: float | None = None,
    ) -> None:
        self._database = database
        self._embedder = embedder
        self.threshold = threshold
        # Used only when no provider could answer; never stricter than the normal threshold.
        self.fallback_threshold = min(threshold, fallback_threshold or threshold)
        self._ttl = timedelta(seconds=ttl_seconds)
        # An entry that raced a deletion lives at most the TTL after it; the tombstone hiding it outlives it.
        self._tombstone_life = self._ttl + CONTEXT_AGE

    async def lookup(
        self, key: CacheKey, question: str, *, threshold: float | None = None
    ) -> CachedAnswer | None:
        """The entry for ``question``: exact, else the nearest at ``threshold`` (default: the cache's own)."""
        params = {"tenant": key.tenant_id, "scope": key.scope_key, "partition": key.partition_key}
        # The embedding is computed while the exact query runs; both queries share one transaction.
        embedding = asyncio.ensure_future(self._embedder.embed([question]))
        try:
            async with self._database.tenant_transaction(key.tenant_id) as session:
                row = (await session.execute(_EXACT, {**params, "hash": question_hash(question)})).first()
                if row is not None:
                    return CachedAnswer(str(row[0]), row[1], row[2], row[3], row[4], 1.0, exact=True)
                (vector,) = await embedding
                nearest = {**params, "vector": _vector_literal(vector), "model": self._embedder.model_id}
                row = (await session.execute(_NEAREST, nearest)).first()
        finally:
            if not embedding.done():
                embedding.cancel()
            # A cancelled or failed embedding nobody awaited must not be reported as never retrieved.
            embedding.add_done_callback(lambda done: done.cancelled() or done.exception())
        if row is None or float(row[5]) < (self.threshold if threshold is None else threshold):
            return None
        return CachedAnswer(str(row[0]), row[1], row[2], row[3], row[4], float(row[5]), exact=False)

    async def store(self, key: CacheKey, entry: NewEntry) -> str | None:
        """Keep ``entry`` (its user's erasure deletes it); its id, or None when one of its documents was deleted
        since its context was read."""
        (vector,) = await self._embedder.embed([entry.question])
        entry_id = str(uuid.uuid4())
        async with self._database.tenant_transaction(key.tenant_id) as session:
            # Expired entries of the tenant go here, in the tenant's own transaction (row-level security).
            await session.execute(
                text("DELETE FROM cache_entries WHERE tenant_id = :tenant AND expire_time <= now()"),
                {"tenant": key.tenant_id},
            )
            inserted = await session.execute(
                _INSERT,
                {
                    "id": entry_id,
                    "tenant": key.tenant_id,
                    "scope": key.scope_key,
                    "partition": key.partition_key,
                    "hash": question_hash(entry.question),
                    "question": entry.question,
                    "vector": _vector_literal(vector),
                    "model": self._embedder.model_id,
                    "answer": entry.answer,
                    "finish": entry.finish_reason,
                    "answer_model": entry.model,
                    "provider": entry.provider,
                    "documents": list(entry.document_ids),
                    "user": entry.user_id,
                    # On the database's clock, as the tombstones' delete_time: the time since the request
                    # arrived is measured here on a monotonic clock, so no two hosts' wall clocks are compared.
                    "context_age": timedelta(seconds=time.monotonic() - entry.asked_at) + CONTEXT_AGE,
                    "ttl": self._ttl,
                },
            )
        return entry_id if inserted.rowcount else None  # type: ignore[attr-defined]

    async def forget_documents(self, tenant_id: str, document_ids: Sequence[str]) -> int:
        """The documents were deleted: drop every entry of the tenant grounded in any of them, and keep their
        tombstones so that answers still being generated from them are not stored; returns the entries dropped."""
        # Distinct: one statement may not upsert a tombstone twice.
        ids = sorted({document_id for document_id in document_ids if document_id != EVERY_DOCUMENT})
        async with self._database.tenant_transaction(tenant_id) as session:
            await self._record_tombstones(session, tenant_id, ids)
            result = await session.execute(
                text("DELETE FROM cache_entries WHERE tenant_id = :tenant AND document_ids && :ids"),
                {"tenant": tenant_id, "ids": ids},
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def erase_tenant(self, tenant_id: str) -> int:
        """Every document of the tenant was erased: drop all its entries, and store none whose question came
        before the erasure; returns the entries dropped."""
        async with self._database.tenant_transaction(tenant_id) as session:
            await self._record_tombstones(session, tenant_id, [EVERY_DOCUMENT])
            result = await session.execute(
                text("DELETE FROM cache_entries WHERE tenant_id = :tenant"), {"tenant": tenant_id}
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def _record_tombstones(
        self, session: AsyncSession, tenant_id: str, document_ids: list[str]
    ) -> None:
        await session.execute(
            _TOMBSTONE, {"tenant": tenant_id, "ids": document_ids, "keep": self._tombstone_life}
        )

    async def forget_user(self, tenant_id: str, user_id: str) -> int:
        """Drop every entry of the tenant made from ``user_id``'s questions; returns how many."""
        async with self._database.tenant_transaction(tenant_id) as session:
            result = await session.execute(
                text("DELETE FROM cache_entries WHERE tenant_id = :tenant AND user_id = :user"),
                {"tenant": tenant_id, "user": user_id},
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def forget_tenant(self, tenant_id: str) -> int:
        async with self._database.tenant_transaction(tenant_id) as session:
            result = await session.execute(
                text("DELETE FROM cache_entries WHERE tenant_id = :tenant"), {"tenant": tenant_id}
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def delete_expired(self, limit: int = 1000) -> int:
        """Delete up to ``limit`` expired entries and as many expired tombstones, of any tenant (the
        ``cache-expiry`` scope, which row-level security lets delete expired rows and nothing else); returns how
        many rows went."""
        async with self._database.scoped_transaction(scope="cache-expiry") as session:
            entries = await session.execute(_EXPIRED_ENTRIES, {"n": limit})
            tombstones = await session.execute(_EXPIRED_TOMBSTONES, {"n": limit})
        return int(entries.rowcount or 0) + int(tombstones.rowcount or 0)  # type: ignore[attr-defined]
