"""The pgvector store: one table, an HNSW cosine index, filters inside the index scan.

A filtered HNSW search over a plain index can return fewer than k rows (the graph walk stops at
`ef_search` candidates, most of which the filter drops). pgvector 0.8's iterative index scans keep
walking until k rows pass the filter (`hnsw.iterative_scan = relaxed_order`, bounded by
`hnsw.max_scan_tuples`); relaxed order is re-sorted by the outer query. bench/retrieval_scale.py measures
recall and latency with a filter keeping 10% of a tenant's rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from parapet.kit.database import Database
from services.retrieval.scope import tenant_scope
from services.retrieval.stores.protocol import (
    VectorFilter,
    VectorHit,
    VectorRecord,
    VectorStoreUnavailable,
    reader_groups,
    stored_groups,
)


def vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text form; 7 significant digits keep float32 precision."""
    return "[" + ",".join(f"{x:.7g}" for x in vector) + "]"


@contextmanager
def _unavailable_on_error(action: str) -> Iterator[None]:
    """A refused or failed statement is the store's failure (VECTOR_STORE_UNAVAILABLE upstream), as with
    the Pinecone store, whichever call made it."""
    try:
        yield
    except DBAPIError as error:
        raise VectorStoreUnavailable(f"pgvector {action} failed: {type(error.orig).__name__}") from error


@dataclass(frozen=True)
class PgVectorOptions:
    #: HNSW candidate list size per scan step; higher = better recall, slower.
    ef_search: int = 800
    #: Upper bound of tuples an iterative scan visits before it gives up (pgvector's default is 20,000).
    max_scan_tuples: int = 100_000


@dataclass(frozen=True)
class OrphanSweep:
    swept: int  # vectors deleted
    next_after: tuple[str, str] | None  # where the next batch starts; None: the table's end was reached


class PgVectorStore:
    name = "pgvector"

    def __init__(self, database: Database, options: PgVectorOptions | None = None) -> None:
        self._database = database
        self._options = options or PgVectorOptions()

    async def upsert(self, tenant_id: str, records: Sequence[VectorRecord]) -> None:
        if not records:
            return
        rows = [
            {
                "t": tenant_id,
                "c": r.chunk_id,
                "d": r.document_id,
                "v": vector_literal(r.vector),
                "g": list(stored_groups(r.access_groups)),
                "m": json.dumps(dict(r.metadata)),
            }
            for r in records
        ]
        sql = text(
            """
            INSERT INTO chunk_vectors (tenant_id, chunk_id, document_id, embedding, access_groups, metadata)
            VALUES (:t, :c, :d, CAST(:v AS vector), :g, CAST(:m AS jsonb))
            ON CONFLICT (tenant_id, chunk_id) DO UPDATE SET document_id = excluded.document_id,
                embedding = excluded.embedding, access_groups = excluded.access_groups, metadata = excluded.metadata,
                write_time = now()
            """
        )
        with _unavailable_on_error("upsert"):
            async with tenant_scope(self._database, tenant_id) as session:
                await session.execute(sql, rows)

    async def query(
        self, tenant_id: str, vector: Sequence[float], top_k: int, where: VectorFilter
    ) -> list[VectorHit]:
        conditions = ["tenant_id = :t", "access_groups && CAST(:g AS text[])"]
        params: dict[str, object] = {
            "t": tenant_id,
            "g": list(reader_groups(where.groups)),
            "v": vector_literal(vector),
            "k": top_k,
        }
        if where.metadata:
            conditions.append("metadata @> CAST(:m AS jsonb)")
            params["m"] = json.dumps(dict(where.metadata))
        if where.document_ids:
            conditions.append("document_id = ANY(CAST(:ids AS text[]))")
            params["ids"] = list(where.document_ids)
        # relaxed_order may return rows slightly out of distance order: the outer ORDER BY fixes that.
        sql = text(
            f"""
            WITH nearest AS MATERIALIZED (
                SELECT chunk_id, document_id, embedding <=> CAST(:v AS vector) AS distance
                FROM chunk_vectors WHERE {" AND ".join(conditions)}
                ORDER BY distance LIMIT :k
            )
            SELECT chunk_id, document_id, distance FROM nearest ORDER BY distance
            """
        )
        with _unavailable_on_error("query"):
            async with tenant_scope(self._database, tenant_id) as session:
                await session.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
                await session.execute(text(f"SET LOCAL hnsw.ef_search = {int(self._options.ef_search)}"))
                await session.execute(
                    text(f"SET LOCAL hnsw.max_scan_tuples = {int(self._options.max_scan_tuples)}")
                )
                rows = (await session.execute(sql, params)).all()
        return [VectorHit(row.chunk_id, row.document_id, 1.0 - float(row.distance)) for row in rows]

    async def set_attributes(
        self,
        tenant_id: str,
        chunk_ids: Sequence[str],
        access_groups: Sequence[str],
        metadata: Mapping[str, str],
    ) -> None:
        with _unavailable_on_error("update"):
            async with tenant_scope(self._database, tenant_id) as session:
                await session.execute(
                    text(
                        "UPDATE chunk_vectors SET access_groups = :g, metadata = CAST(:m AS jsonb)"
                        " WHERE tenant_id = :t AND chunk_id = ANY(CAST(:ids AS text[]))"
                    ),
                    {
                        "t": tenant_id,
                        "ids": list(chunk_ids),
                        "g": list(stored_groups(access_groups)),
                        "m": json.dumps(dict(metadata)),
                    },
                )

    async def sweep_orphans(
        self, after: tuple[str, str] | None, limit: int, grace_seconds: float
    ) -> OrphanSweep:
        """Looks at the ``limit`` vectors after the key ``after`` (from the start when None) and deletes those no
        chunk row references and nothing wrote for ``grace_seconds``: the garbage of a deletion whose vector
        delete failed (``deletion.forget_vectors``), or of an ingestion that stopped between writing a
        document's vectors and its chunk rows. Spans tenants, so it runs as the owner (no caller, no RLS scope).

        The write time is read from the row being deleted (``v.write_time``), so a vector an ingestion writes
        again meanwhile is re-checked and kept. Statement-level snapshot: a chunk row committed after it began
        is not seen, but its vector was then written within the grace, which every ingestion (vectors, then
        its rows, within one call) finishes long before."""
        async with self._database.transaction() as session:
            rows = (
                await session.execute(
                    text(
                        """
                        WITH batch AS (
                            SELECT tenant_id, chunk_id FROM chunk_vectors
                            WHERE CAST(:after_t AS text) IS NULL
                               OR (tenant_id, chunk_id) > (CAST(:after_t AS text), CAST(:after_c AS text))
                            ORDER BY tenant_id, chunk_id LIMIT :n
                        ), swept AS (
                            DELETE FROM chunk_vectors v USING batch b
                            WHERE v.tenant_id = b.tenant_id AND v.chunk_id = b.chunk_id
                              AND v.write_time < now() - make_interval(secs => :grace)
                              AND NOT EXISTS (
                                  SELECT 1 FROM chunks c
                                  WHERE c.tenant_id = b.tenant_id AND c.chunk_id = b.chunk_id
                              )
                            RETURNING v.tenant_id
                        )
                        SELECT (SELECT count(*) FROM batch) AS seen, (SELECT count(*) FROM swept) AS swept,
                               (SELECT tenant_id FROM batch ORDER BY tenant_id DESC, chunk_id DESC LIMIT 1)
                                   AS last_t,
                               (SELECT chunk_id FROM batch ORDER BY tenant_id DESC, chunk_id DESC LIMIT 1)
                                   AS last_c
                        """
                    ),
                    {
                        "after_t": after[0] if after else None,
                        "after_c": after[1] if after else None,
                        "n": limit,
                        "grace": grace_seconds,
                    },
                )
            ).one()
        last = (rows.last_t, rows.last_c) if rows.last_t is not None else None
        return OrphanSweep(swept=int(rows.swept), next_after=last if int(rows.seen) == limit else None)

    async def delete_chunks(self, tenant_id: str, chunk_ids: Sequence[str]) -> None:
        if chunk_ids:
            await self._delete(tenant_id, "chunk_id = ANY(CAST(:ids AS text[]))", list(chunk_ids))

    async def delete_documents(self, tenant_id: str, document_ids: Sequence[str]) -> None:
        if document_ids:
            await self._delete(tenant_id, "document_id = ANY(CAST(:ids AS text[]))", list(document_ids))

    async def delete_tenant(self, tenant_id: str) -> None:
        await self._delete(tenant_id, "true", [])

    async def _delete(self, tenant_id: str, condition: str, ids: list[str]) -> None:
        with _unavailable_on_error("delete"):
            async with tenant_scope(self._database, tenant_id) as session:
                await session.execute(
                    text(f"DELETE FROM chunk_vectors WHERE tenant_id = :t AND {condition}"),
                    {"t": tenant_id, "ids": ids},
                )
