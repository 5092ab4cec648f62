"""SQL over the retrieval schema. Every function runs inside a `tenant_scope` session (RLS applies)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.retrieval.stores.protocol import PUBLIC_GROUP, reader_groups, stored_groups


@dataclass(frozen=True)
class DocumentRow:
    document_id: str
    title: str
    source_uri: str
    mime_type: str
    metadata: dict[str, str]
    access_groups: list[str]
    owner_user_id: str
    content_sha256: str
    size_bytes: int
    chunk_count: int
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True)
class NewChunk:
    chunk_id: str
    ordinal: int
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class ChunkRow:
    chunk_id: str
    document_id: str
    text: str
    start_offset: int
    end_offset: int
    title: str
    source_uri: str
    metadata: dict[str, str]


_DOCUMENT_COLUMNS = (
    "document_id, title, source_uri, mime_type, metadata, access_groups, owner_user_id, content_sha256, "
    "size_bytes, chunk_count, create_time, update_time"
)


def _document(row: Any) -> DocumentRow:
    return DocumentRow(
        document_id=row.document_id,
        title=row.title,
        source_uri=row.source_uri,
        mime_type=row.mime_type,
        metadata=dict(row.metadata),
        access_groups=[g for g in row.access_groups if g != PUBLIC_GROUP],
        owner_user_id=row.owner_user_id,
        content_sha256=row.content_sha256,
        size_bytes=row.size_bytes,
        chunk_count=row.chunk_count,
        create_time=row.create_time,
        update_time=row.update_time,
    )


async def get_document(
    session: AsyncSession, tenant_id: str, document_id: str, *, lock: bool = False
) -> DocumentRow | None:
    """The document whatever its groups (the caller decides what the caller may do with it, see
    `ingest.Writer`); with `lock`, its id is locked until the transaction ends, so concurrent writers of one id
    take turns, also while no document has it yet."""
    if lock:
        # FOR UPDATE locks no row while the id is free: two ingestions creating it both read None and both
        # wrote it (the second overwrote the first, whoever owned it). A lock on the id itself serialises them.
        await session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": json.dumps(["retrieval.document", tenant_id, document_id])},
        )
    row = (
        await session.execute(
            text(
                f"SELECT {_DOCUMENT_COLUMNS} FROM documents WHERE tenant_id = :t AND document_id = :d"
                + (" FOR UPDATE" if lock else "")
            ),
            {"t": tenant_id, "d": document_id},
        )
    ).first()
    return _document(row) if row else None


async def chunk_ids(session: AsyncSession, tenant_id: str, document_ids: Sequence[str]) -> list[str]:
    rows = await session.execute(
        text("SELECT chunk_id FROM chunks WHERE tenant_id = :t AND document_id = ANY(CAST(:d AS text[]))"),
        {"t": tenant_id, "d": list(document_ids)},
    )
    return [r.chunk_id for r in rows]


async def referenced_chunk_ids(session: AsyncSession, tenant_id: str, chunk_ids: Sequence[str]) -> set[str]:
    """Which of these chunk ids a chunk row of the tenant holds (the orphan sweep's check of a store's ids)."""
    rows = await session.execute(
        text("SELECT chunk_id FROM chunks WHERE tenant_id = :t AND chunk_id = ANY(CAST(:c AS text[]))"),
        {"t": tenant_id, "c": list(chunk_ids)},
    )
    return {r.chunk_id for r in rows}


async def write_document(
    session: AsyncSession,
    tenant_id: str,
    document: Mapping[str, Any],
    chunks: Sequence[NewChunk] | None,
) -> None:
    """Creates or updates the document row; with `chunks`, replaces its chunks (same transaction). The
    owner is who gave the text: the caller keeps it on a change of attributes only (ingest._unchanged)."""
    params = dict(document) | {
        "t": tenant_id,
        "metadata": json.dumps(document["metadata"]),
        "groups": list(stored_groups(document["access_groups"])),
    }
    await session.execute(
        text(
            """
            INSERT INTO documents (tenant_id, document_id, title, source_uri, mime_type, metadata, access_groups,
                                   owner_user_id, content_sha256, size_bytes, chunk_count)
            VALUES (:t, :document_id, :title, :source_uri, :mime_type, CAST(:metadata AS jsonb), :groups,
                    :owner_user_id, :content_sha256, :size_bytes, :chunk_count)
            ON CONFLICT (tenant_id, document_id) DO UPDATE SET title = excluded.title,
                source_uri = excluded.source_uri, mime_type = excluded.mime_type, metadata = excluded.metadata,
                access_groups = excluded.access_groups, owner_user_id = excluded.owner_user_id,
                content_sha256 = excluded.content_sha256,
                size_bytes = excluded.size_bytes, chunk_count = excluded.chunk_count, update_time = now()
            """
        ),
        params,
    )
    if chunks is None:
        await session.execute(
            text(
                "UPDATE chunks SET access_groups = :groups, metadata = CAST(:metadata AS jsonb)"
                " WHERE tenant_id = :t AND document_id = :document_id"
            ),
            params,
        )
        return
    await session.execute(
        text("DELETE FROM chunks WHERE tenant_id = :t AND document_id = :document_id"), params
    )
    if chunks:
        await session.execute(
            text(
                """
                INSERT INTO chunks (tenant_id, chunk_id, document_id, ordinal, text, start_offset, end_offset,
                                    access_groups, metadata)
                VALUES (:t, :chunk_id, :document_id, :ordinal, :text, :start, :end, :groups,
                        CAST(:metadata AS jsonb))
                """
            ),
            [
                params
                | {
                    "chunk_id": c.chunk_id,
                    "ordinal": c.ordinal,
                    "text": c.text,
                    "start": c.start,
                    "end": c.end,
                }
                for c in chunks
            ],
        )


async def delete_documents(
    session: AsyncSession,
    tenant_id: str,
    *,
    document_ids: Sequence[str] | None = None,
    owner_user_id: str | None = None,
    limit: int = 1000,
) -> list[str]:
    """Deletes (with their chunks) up to `limit` documents of the scope; returns their ids."""
    params: dict[str, Any]
    if document_ids is not None:
        condition, params = "document_id = ANY(CAST(:ids AS text[]))", {"ids": list(document_ids)}
    elif owner_user_id is not None:
        condition, params = "owner_user_id = :owner", {"owner": owner_user_id}
    else:
        condition, params = "true", {}
    rows = await session.execute(
        text(
            f"""
            DELETE FROM documents WHERE tenant_id = :t AND document_id IN (
                SELECT document_id FROM documents WHERE tenant_id = :t AND {condition}
                ORDER BY document_id LIMIT :limit FOR UPDATE)
            RETURNING document_id
            """
        ),
        {"t": tenant_id, "limit": limit} | params,
    )
    return sorted(r.document_id for r in rows)


async def readable_document(
    session: AsyncSession, tenant_id: str, document_id: str, groups: Sequence[str]
) -> DocumentRow | None:
    row = (
        await session.execute(
            text(
                f"SELECT {_DOCUMENT_COLUMNS} FROM documents WHERE tenant_id = :t AND document_id = :d"
                " AND access_groups && CAST(:g AS text[])"
            ),
            {"t": tenant_id, "d": document_id, "g": list(reader_groups(groups))},
        )
    ).first()
    return _document(row) if row else None


async def list_documents(
    session: AsyncSession,
    tenant_id: str,
    groups: Sequence[str],
    *,
    after: str,
    limit: int,
    owner_user_id: str = "",
    metadata: Mapping[str, str] | None = None,
) -> list[DocumentRow]:
    conditions = ["tenant_id = :t", "access_groups && CAST(:g AS text[])", "document_id > :after"]
    params: dict[str, Any] = {
        "t": tenant_id,
        "g": list(reader_groups(groups)),
        "after": after,
        "limit": limit,
    }
    if owner_user_id:
        conditions.append("owner_user_id = :owner")
        params["owner"] = owner_user_id
    if metadata:
        conditions.append("metadata @> CAST(:m AS jsonb)")
        params["m"] = json.dumps(dict(metadata))
    rows = await session.execute(
        text(
            f"SELECT {_DOCUMENT_COLUMNS} FROM documents WHERE {' AND '.join(conditions)}"
            " ORDER BY document_id LIMIT :limit"
        ),
        params,
    )
    return [_document(r) for r in rows]


def _chunk_filter(
    groups: Sequence[str], metadata: Mapping[str, str], document_ids: Sequence[str]
) -> tuple[list[str], dict[str, Any]]:
    conditions = ["c.tenant_id = :t", "c.access_groups && CAST(:g AS text[])"]
    params: dict[str, Any] = {"g": list(reader_groups(groups))}
    if metadata:
        conditions.append("c.metadata @> CAST(:m AS jsonb)")
        params["m"] = json.dumps(dict(metadata))
    if document_ids:
        conditions.append("c.document_id = ANY(CAST(:ids AS text[]))")
        params["ids"] = list(document_ids)
    return conditions, params


async def full_text_search(
    session: AsyncSession,
    tenant_id: str,
    query: str,
    limit: int,
    groups: Sequence[str],
    metadata: Mapping[str, str],
    document_ids: Sequence[str],
) -> list[tuple[str, float]]:
    """(chunk id, rank) best first. Query words are OR-ed (a question rarely has every word in one chunk)
    and ranked by ts_rank_cd with length normalisation; the filters are part of the same query. The OR-ed
    query is re-parsed with the `simple` configuration because its lexemes are already stemmed."""
    conditions, params = _chunk_filter(groups, metadata, document_ids)
    rows = await session.execute(
        text(
            f"""
            WITH q AS (
                SELECT to_tsquery('simple', replace(plainto_tsquery('english', :q)::text, ' & ', ' | ')) AS query
            )
            SELECT c.chunk_id, ts_rank_cd(c.tsv, q.query, 1) AS rank
            FROM chunks c, q
            WHERE {" AND ".join(conditions)} AND numnode(q.query) > 0 AND c.tsv @@ q.query
            ORDER BY rank DESC, c.chunk_id LIMIT :limit
            """
        ),
        {"t": tenant_id, "q": query, "limit": limit} | params,
    )
    return [(r.chunk_id, float(r.rank)) for r in rows]


async def fetch_chunks(
    session: AsyncSession,
    tenant_id: str,
    chunk_ids: Sequence[str],
    groups: Sequence[str],
    metadata: Mapping[str, str],
    document_ids: Sequence[str],
) -> dict[str, ChunkRow]:
    """The chunks among `chunk_ids` that exist and pass the filters (checked again: defence in depth)."""
    conditions, params = _chunk_filter(groups, metadata, document_ids)
    rows = await session.execute(
        text(
            f"""
            SELECT c.chunk_id, c.document_id, c.text, c.start_offset, c.end_offset, d.title, d.source_uri,
                   d.metadata
            FROM chunks c JOIN documents d ON d.tenant_id = c.tenant_id AND d.document_id = c.document_id
            WHERE {" AND ".join(conditions)} AND c.chunk_id = ANY(CAST(:chunk_ids AS text[]))
            """
        ),
        {"t": tenant_id, "chunk_ids": list(chunk_ids)} | params,
    )
    return {
        r.chunk_id: ChunkRow(
            r.chunk_id,
            r.document_id,
            r.text,
            r.start_offset,
            r.end_offset,
            r.title,
            r.source_uri,
            dict(r.metadata),
        )
        for r in rows
    }


async def add_outbox(
    session: AsyncSession, event_id: str, tenant_id: str, subject: str, ce_type: str, payload: bytes
) -> None:
    await session.execute(
        text(
            "INSERT INTO outbox (event_id, tenant_id, subject, ce_type, payload)"
            " VALUES (CAST(:e AS uuid), :t, :s, :c, :p)"
        ),
        {"e": event_id, "t": tenant_id, "s": subject, "c": ce_type, "p": payload},
    )
