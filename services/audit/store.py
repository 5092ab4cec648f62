"""Appending records to a tenant's chain: serialized per tenant, idempotent by record id, set-wise.

Appends of one tenant take the tenant's ``chain_heads`` row ``FOR UPDATE`` first, so concurrent appends
(RPCs, the stream consumer, several replicas) queue on it and the chain never forks; other tenants are not
blocked. A batch is one ``INSERT ... SELECT FROM unnest(...)``: one round trip however many records.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.kit.database import Database
from services.audit.canonical import COLUMN_NAMES, PreparedRecord, record_hash
from services.audit.scope import tenant_scope

# Column name -> SQL array type for unnest; jsonb and text[] travel as JSON text (unnest flattens
# multidimensional arrays, so an array of arrays cannot be passed as one).
_ARRAY_TYPES: dict[str, str] = {
    "kind": "text[]",
    "create_time": "timestamptz[]",
    "prompt_tokens": "bigint[]",
    "completion_tokens": "bigint[]",
    "cached_tokens": "bigint[]",
    "cost_micros": "bigint[]",
    "latency_us": "bigint[]",
    "time_to_first_token_us": "bigint[]",
    "cached": "boolean[]",
    "fallback_models": "text[]",
    "moderation_summary": "text[]",
    "status_code": "integer[]",
}
_SELECT_EXPR: dict[str, str] = {
    "fallback_models": "ARRAY(SELECT jsonb_array_elements_text(u.fallback_models::jsonb))",
    "moderation_summary": "u.moderation_summary::jsonb",
}
_EXTRA = (
    ("sequence", "bigint[]"),
    ("record_id", "uuid[]"),
    ("metadata", "bytea[]"),
    ("previous_hash", "bytea[]"),
    ("record_hash", "bytea[]"),
    ("prompt", "text[]"),
    ("response", "text[]"),
    ("body_expire_time", "timestamptz[]"),
)
_ALL = [(name, _ARRAY_TYPES.get(name, "text[]")) for name in COLUMN_NAMES] + list(_EXTRA)
INSERT_SQL = text(
    "INSERT INTO records (tenant_id, "
    + ", ".join(name for name, _ in _ALL)
    + ") SELECT :tenant_id, "
    + ", ".join(_SELECT_EXPR.get(name, f"u.{name}") for name, _ in _ALL)
    + " FROM unnest("
    + ", ".join(f"CAST(:{name} AS {sql_type})" for name, sql_type in _ALL)
    + ") AS u("
    + ", ".join(name for name, _ in _ALL)
    + ")"
)


@dataclass(frozen=True)
class AppendResult:
    """What happened to one record of a batch."""

    record_id: str
    sequence: int
    previous_hash: bytes
    record_hash: bytes
    already_recorded: bool  # the id was stored before (by an earlier call or earlier in this batch)
    conflict: bool  # the id was stored with different content: nothing appended, nothing changed


async def _lock_head(session: AsyncSession, tenant_id: str) -> tuple[int, bytes]:
    await session.execute(
        text("INSERT INTO chain_heads (tenant_id) VALUES (:t) ON CONFLICT (tenant_id) DO NOTHING"),
        {"t": tenant_id},
    )
    row = (
        await session.execute(
            text("SELECT sequence, head_hash FROM chain_heads WHERE tenant_id = :t FOR UPDATE"),
            {"t": tenant_id},
        )
    ).one()
    return int(row.sequence), bytes(row.head_hash)


async def _existing(session: AsyncSession, ids: list[str]) -> dict[str, Any]:
    rows = await session.execute(
        text(
            "SELECT record_id::text AS record_id, sequence, previous_hash, record_hash, metadata"
            " FROM records WHERE record_id = ANY(CAST(:ids AS uuid[]))"
        ),
        {"ids": ids},
    )
    return {row.record_id: row for row in rows}


def _params(tenant_id: str, rows: list[tuple[PreparedRecord, int, bytes, bytes]]) -> dict[str, Any]:
    params: dict[str, Any] = {"tenant_id": tenant_id}
    for name in COLUMN_NAMES:
        values = [prepared.columns[name] for prepared, *_ in rows]
        if name in _SELECT_EXPR:
            values = [json.dumps(value, sort_keys=True) for value in values]
        params[name] = values
    params["sequence"] = [sequence for _, sequence, _, _ in rows]
    params["record_id"] = [prepared.record_id for prepared, *_ in rows]
    params["metadata"] = [prepared.metadata for prepared, *_ in rows]
    params["previous_hash"] = [previous for _, _, previous, _ in rows]
    params["record_hash"] = [digest for _, _, _, digest in rows]
    params["prompt"] = [prepared.prompt for prepared, *_ in rows]
    params["response"] = [prepared.response for prepared, *_ in rows]
    params["body_expire_time"] = [prepared.body_expire_time for prepared, *_ in rows]
    return params


async def insert_rows(
    session: AsyncSession, tenant_id: str, rows: list[tuple[PreparedRecord, int, bytes, bytes]]
) -> None:
    """Insert already-chained rows (record, sequence, previous hash, record hash) in one statement.

    Does not touch the chain head: :func:`append_in` does that; benchmarks use this to load chains.
    """
    await session.execute(INSERT_SQL, _params(tenant_id, rows))


async def append_in(
    session: AsyncSession, tenant_id: str, batch: Sequence[PreparedRecord]
) -> list[AppendResult]:
    """Append ``batch`` to ``tenant_id``'s chain inside ``session`` (a tenant-scoped transaction)."""
    head_sequence, head_hash = await _lock_head(session, tenant_id)
    existing = await _existing(session, sorted({p.record_id for p in batch}))
    results: list[AppendResult] = []
    new_rows: list[tuple[PreparedRecord, int, bytes, bytes]] = []
    appended: dict[str, tuple[PreparedRecord, AppendResult]] = {}
    for prepared in batch:
        stored = existing.get(prepared.record_id)
        if stored is not None:
            results.append(
                AppendResult(
                    prepared.record_id,
                    int(stored.sequence),
                    bytes(stored.previous_hash),
                    bytes(stored.record_hash),
                    already_recorded=True,
                    conflict=bytes(stored.metadata) != prepared.metadata,
                )
            )
            continue
        earlier = appended.get(prepared.record_id)
        if earlier is not None:
            first, result = earlier
            conflict = first.metadata != prepared.metadata
            results.append(
                AppendResult(
                    prepared.record_id,
                    result.sequence,
                    result.previous_hash,
                    result.record_hash,
                    already_recorded=True,
                    conflict=conflict,
                )
            )
            continue
        sequence = head_sequence + 1
        digest = record_hash(sequence, head_hash, prepared.metadata_sha256)
        result = AppendResult(prepared.record_id, sequence, head_hash, digest, False, False)
        new_rows.append((prepared, sequence, head_hash, digest))
        appended[prepared.record_id] = (prepared, result)
        results.append(result)
        head_sequence, head_hash = sequence, digest
    if new_rows:
        await insert_rows(session, tenant_id, new_rows)
        await session.execute(
            text(
                "UPDATE chain_heads SET sequence = :s, head_hash = :h, update_time = now() WHERE tenant_id = :t"
            ),
            {"s": head_sequence, "h": head_hash, "t": tenant_id},
        )
    return results


async def append(database: Database, tenant_id: str, batch: Sequence[PreparedRecord]) -> list[AppendResult]:
    """Append ``batch`` in one tenant-scoped transaction (committed when this returns)."""
    async with tenant_scope(database, tenant_id) as session:
        return await append_in(session, tenant_id, batch)
