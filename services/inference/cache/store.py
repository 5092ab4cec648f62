"""The semantic cache's storage: exact match by question hash first, else nearest embedding above a threshold.

Every query is bound to one tenant (explicit filter plus row-level security), one access scope and one partition,
so an answer can only reach a caller who would have been given the same documents for the same kind of request.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import text

from parapet.embeddings import Embedder
from parapet.kit.database import Database
from services.inference.cache.keys import CacheKey, question_hash


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


_EXACT = text(
    """
    SELECT entry_id, answer, finish_reason, model, provider FROM cache_entries
    WHERE tenant_id = :tenant AND scope_key = :scope AND partition_key = :partition
      AND question_hash = :hash AND expire_time > now()
    ORDER BY create_time DESC LIMIT 1
    """
)
_NEAREST = text(
    """
    SELECT entry_id, answer, finish_reason, model, provider,
           1 - (embedding <=> CAST(:vector AS public.vector)) AS similarity
    FROM cache_entries
    WHERE tenant_id = :tenant AND scope_key = :scope AND partition_key = :partition
      AND embedding_model = :model AND expire_time > now()
    ORDER BY embedding <=> CAST(:vector AS public.vector) LIMIT 1
    """
)
_INSERT = text(
    """
    INSERT INTO cache_entries (entry_id, tenant_id, scope_key, partition_key, question_hash, question, embedding,
                               embedding_model, answer, finish_reason, model, provider, document_ids, user_id,
                               expire_time)
    VALUES (:id, :tenant, :scope, :partition, :hash, :question, CAST(:vector AS public.vector), :model, :answer,
            :finish, :answer_model, :provider, :documents, :user, now() + :ttl)
    """
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

    async def store(
        self,
        key: CacheKey,
        question: str,
        answer: str,
        finish_reason: int,
        model: str,
        provider: str,
        document_ids: Sequence[str],
        user_id: str,
    ) -> str:
        """Keep ``answer`` to ``question``, asked by ``user_id`` (whose erasure deletes the entry)."""
        (vector,) = await self._embedder.embed([question])
        entry_id = str(uuid.uuid4())
        async with self._database.tenant_transaction(key.tenant_id) as session:
            # Expired entries of the tenant go here, in the tenant's own transaction (row-level security).
            await session.execute(
                text("DELETE FROM cache_entries WHERE tenant_id = :tenant AND expire_time <= now()"),
                {"tenant": key.tenant_id},
            )
            await session.execute(
                _INSERT,
                {
                    "id": entry_id,
                    "tenant": key.tenant_id,
                    "scope": key.scope_key,
                    "partition": key.partition_key,
                    "hash": question_hash(question),
                    "question": question,
                    "vector": _vector_literal(vector),
                    "model": self._embedder.model_id,
                    "answer": answer,
                    "finish": finish_reason,
                    "answer_model": model,
                    "provider": provider,
                    "documents": list(document_ids),
                    "user": user_id,
                    "ttl": self._ttl,
                },
            )
        return entry_id

    async def forget_documents(self, tenant_id: str, document_ids: Sequence[str]) -> int:
        """Drop every entry of the tenant grounded in any of ``document_ids``; returns how many."""
        async with self._database.tenant_transaction(tenant_id) as session:
            result = await session.execute(
                text("DELETE FROM cache_entries WHERE tenant_id = :tenant AND document_ids && :ids"),
                {"tenant": tenant_id, "ids": list(document_ids)},
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

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
        """Delete up to ``limit`` expired entries of any tenant (the ``cache-expiry`` scope, which row-level
        security lets delete expired rows and nothing else); returns how many."""
        async with self._database.scoped_transaction(scope="cache-expiry") as session:
            result = await session.execute(
                text(
                    "DELETE FROM cache_entries WHERE entry_id IN (SELECT entry_id FROM cache_entries"
                    " WHERE expire_time <= now() ORDER BY expire_time LIMIT :n)"
                ),
                {"n": limit},
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
