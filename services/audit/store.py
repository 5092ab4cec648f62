"""Appending records to a tenant's chain: serialized per tenant, idempotent by record id, set-wise.

Appends of one tenant take the tenant's ``chain_heads`` row ``FOR UPDATE`` first, so concurrent appends
(RPCs, the stream consumer, several replicas) queue on it and the chain never forks; other tenants are not
blocked. A batch is one ``INSERT ... SELECT FROM jsonb_to_recordset(...)``: one round trip however many
records.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.kit.database import Database
from services.audit.canonical import COLUMN_NAMES, PreparedRecord, record_hash
from services.audit.scope import TENANT_ROLE, tenant_scope

# The rows travel as one JSON array (json.dumps is C-fast, where dumping dozens of typed arrays is not);
# jsonb_to_recordset types each field. Bytes travel as hex.
_SQL_TYPES: dict[str, str] = {
    "create_time": "timestamptz",
    "prompt_tokens": "bigint",
    "completion_tokens": "bigint",
    "cached_tokens": "bigint",
    "cost_micros": "bigint",
    "latency_us": "bigint",
    "time_to_first_token_us": "bigint",
    "cached": "boolean",
    "fallback_models": "jsonb",
    "moderation_summary": "jsonb",
    "status_code": "integer",
    "sequence": "bigint",
    "record_id": "uuid",
    "body_expire_time": "timestamptz",
}
_BYTES = ("metadata", "previous_hash", "record_hash")
_SELECT_EXPR: dict[str, str] = {
    "fallback_models": "ARRAY(SELECT jsonb_array_elements_text(r.fallback_models))",
    **{name: f"decode(r.{name}, 'hex')" for name in _BYTES},
}
_ALL = (*COLUMN_NAMES, "sequence", "record_id", *_BYTES, "prompt", "response", "body_expire_time")
INSERT_SQL = text(
    "INSERT INTO records (tenant_id, "
    + ", ".join(_ALL)
    + ") SELECT :tenant_id, "
    + ", ".join(_SELECT_EXPR.get(name, f"r.{name}") for name in _ALL)
    + " FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r("
    + ", ".join(f"{name} {_SQL_TYPES.get(name, 'text')}" for name in _ALL)
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
    # One round trip: create the head row on the tenant's first record, and lock it either way (an
    # ON CONFLICT DO UPDATE locks the existing row like SELECT ... FOR UPDATE and returns it).
    row = (
        await session.execute(
            text(
                "INSERT INTO chain_heads (tenant_id) VALUES (:t)"
                " ON CONFLICT (tenant_id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id"
                " RETURNING sequence, head_hash"
            ),
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


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _rows_json(rows: list[tuple[PreparedRecord, int, bytes, bytes]]) -> str:
    out = []
    for prepared, sequence, previous, digest in rows:
        row = {name: _json_value(value) for name, value in prepared.columns.items()}
        row.update(
            sequence=sequence,
            record_id=prepared.record_id,
            metadata=prepared.metadata.hex(),
            previous_hash=previous.hex(),
            record_hash=digest.hex(),
            prompt=prepared.prompt,
            response=prepared.response,
            body_expire_time=_json_value(prepared.body_expire_time),
        )
        out.append(row)
    return json.dumps(out, separators=(",", ":"))


async def insert_rows(
    session: AsyncSession, tenant_id: str, rows: list[tuple[PreparedRecord, int, bytes, bytes]]
) -> None:
    """Insert already-chained rows (record, sequence, previous hash, record hash) in one statement.

    Does not touch the chain head: :func:`append_in` does that; benchmarks use this to load chains.
    """
    await session.execute(INSERT_SQL, {"tenant_id": tenant_id, "rows": _rows_json(rows)})


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


async def append_groups(
    database: Database, groups: Mapping[str, Sequence[PreparedRecord]]
) -> dict[str, list[AppendResult]]:
    """Append each tenant's records in one transaction for all of them (one commit, one fsync).

    Row-level security still confines every statement to one tenant: the tenant setting is switched
    before each tenant's statements. Heads are locked in tenant order, so two replicas appending
    overlapping sets of tenants cannot deadlock.
    """
    results: dict[str, list[AppendResult]] = {}
    async with database.transaction() as session:
        await session.execute(text(f"SET LOCAL ROLE {TENANT_ROLE}"))
        for tenant_id in sorted(groups):
            await session.execute(text("SELECT set_config('parapet.tenant_id', :t, true)"), {"t": tenant_id})
            results[tenant_id] = await append_in(session, tenant_id, groups[tenant_id])
    return results


async def append(database: Database, tenant_id: str, batch: Sequence[PreparedRecord]) -> list[AppendResult]:
    """Append ``batch`` in one tenant-scoped transaction (committed when this returns)."""
    async with tenant_scope(database, tenant_id) as session:
        return await append_in(session, tenant_id, batch)
