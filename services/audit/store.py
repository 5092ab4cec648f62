"""Appending records to a tenant's chain: serialized per tenant, idempotent by record id, set-wise.

Appends of one tenant take the tenant's ``chain_heads`` row ``FOR UPDATE`` first, so concurrent appends
(RPCs, the stream consumer, several replicas) queue on it and the chain never forks; other tenants are not
blocked. A batch is one ``INSERT ... SELECT FROM jsonb_to_recordset(...)``: one round trip however many
records. A record of a user erased after it was created (it waited in the AUDIT stream) is stored without its
bodies (``_apply_erasures``), and so is one whose bodies' retention ended before it arrived (``_drop_expired``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.kit.database import Database
from services.audit.canonical import COLUMN_NAMES, INTERACTION, PreparedRecord, record_hash
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
    "erase_time": "timestamptz",
}
_BYTES = ("metadata", "previous_hash", "record_hash")
_SELECT_EXPR: dict[str, str] = {
    "fallback_models": "ARRAY(SELECT jsonb_array_elements_text(r.fallback_models))",
    **{name: f"decode(r.{name}, 'hex')" for name in _BYTES},
}
_ALL = (
    *COLUMN_NAMES,
    "sequence",
    "record_id",
    *_BYTES,
    "prompt",
    "response",
    "body_expire_time",
    "erase_time",
)
INSERT_SQL = (
    "INSERT INTO records (tenant_id, "
    + ", ".join(_ALL)
    + ") SELECT %(tenant_id)s, "
    + ", ".join(_SELECT_EXPR.get(name, f"r.{name}") for name in _ALL)
    + " FROM jsonb_to_recordset(CAST(%(rows)s AS jsonb)) AS r("
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


_SET_TENANT = "SELECT set_config('parapet.tenant_id', %s, true)"
# Creates the head row on the tenant's first record and locks it either way: ON CONFLICT DO UPDATE locks
# the existing row like SELECT ... FOR UPDATE, and returns it.
_LOCK_HEAD = (
    "INSERT INTO chain_heads (tenant_id) VALUES (%s)"
    " ON CONFLICT (tenant_id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id RETURNING sequence, head_hash"
)
_EXISTING = (
    "SELECT record_id::text, sequence, previous_hash, record_hash, metadata"
    " FROM records WHERE record_id = ANY(CAST(%s AS uuid[]))"
)
_MOVE_HEAD = "UPDATE chain_heads SET sequence = %s, head_hash = %s, update_time = now() WHERE tenant_id = %s"
_ERASURES = "SELECT user_id, erase_time FROM erasures WHERE user_id = ANY(%s)"

Row = tuple[PreparedRecord, int, bytes, bytes]  # record, sequence, previous hash, record hash


async def _driver(session: AsyncSession) -> Any:
    """The session's psycopg connection (same transaction), for pipelined statements."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    return raw.driver_connection


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _rows_json(rows: list[Row]) -> str:
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
            erase_time=_json_value(prepared.erase_time),
        )
        out.append(row)
    return json.dumps(out, separators=(",", ":"))


async def insert_rows(session: AsyncSession, tenant_id: str, rows: list[Row]) -> None:
    """Insert already-chained rows in one statement, without moving the head (benchmarks load chains so)."""
    driver = await _driver(session)
    await driver.execute(INSERT_SQL, {"tenant_id": tenant_id, "rows": _rows_json(rows)})


def _holds_bodies(prepared: PreparedRecord) -> bool:
    """Whether ``prepared`` is an interaction with a body to store: what an erasure drops."""
    return prepared.columns["kind"] == INTERACTION and (
        prepared.prompt is not None or prepared.response is not None
    )


def _apply_erasures(batch: Sequence[PreparedRecord], erased: Mapping[str, datetime]) -> list[PreparedRecord]:
    """``batch`` with the bodies dropped of every interaction created before its user's erasure (``erased``: user
    → erase time), as that Erase would have dropped them had the record been stored then: it was still waiting in
    the AUDIT stream. Only bodies go, so the metadata, its body hashes and the chain stay as they would be; a
    record created after the erasure is new activity and keeps its bodies."""
    out = []
    for prepared in batch:
        erase_time = erased.get(prepared.columns["user_id"])
        if (
            erase_time is not None
            and _holds_bodies(prepared)
            and prepared.columns["create_time"] < erase_time
        ):
            prepared = replace(prepared, prompt=None, response=None, erase_time=erase_time)
        out.append(prepared)
    return out


def _drop_expired(batch: Sequence[PreparedRecord], now: datetime) -> list[PreparedRecord]:
    """``batch`` with the bodies dropped whose retention ended by ``now``, as the retention job would have dropped
    them had the record been stored in time (it waited in the AUDIT stream, or in a producer's outbox): stored with
    them, they were readable until that job's next run. Only bodies go: metadata and chain are as they would be."""
    return [
        replace(prepared, prompt=None, response=None, erase_time=now)
        if prepared.body_expire_time is not None
        and prepared.body_expire_time <= now
        and _holds_bodies(prepared)
        else prepared
        for prepared in batch
    ]


async def lock_head(session: AsyncSession, tenant_id: str) -> int:
    """Take ``tenant_id``'s head lock in ``session`` (appends of the tenant wait until it commits) and return the
    head's sequence: every record committed so far is at or below it."""
    driver = await _driver(session)
    head = await driver.execute(_LOCK_HEAD, (tenant_id,))
    sequence, _ = await head.fetchone()
    return int(sequence)


def _chain(
    batch: Sequence[PreparedRecord], head_sequence: int, head_hash: bytes, stored: Mapping[str, Any]
) -> tuple[list[AppendResult], list[Row], int, bytes]:
    """Chain ``batch`` after the head; ``stored`` maps already stored ids to (id, seq, prev, hash, metadata)."""
    results: list[AppendResult] = []
    new_rows: list[Row] = []
    appended: dict[str, tuple[PreparedRecord, AppendResult]] = {}
    for prepared in batch:
        found = stored.get(prepared.record_id)
        if found is not None:
            _, sequence, previous, digest, metadata = found
            results.append(
                AppendResult(
                    prepared.record_id,
                    int(sequence),
                    bytes(previous),
                    bytes(digest),
                    already_recorded=True,
                    conflict=bytes(metadata) != prepared.metadata,
                )
            )
            continue
        earlier = appended.get(prepared.record_id)
        if earlier is not None:
            first, result = earlier
            results.append(
                AppendResult(
                    prepared.record_id,
                    result.sequence,
                    result.previous_hash,
                    result.record_hash,
                    already_recorded=True,
                    conflict=first.metadata != prepared.metadata,
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
    return results, new_rows, head_sequence, head_hash


async def _append_tenants(
    session: AsyncSession, groups: Mapping[str, Sequence[PreparedRecord]], *, switch_tenant: bool
) -> dict[str, list[AppendResult]]:
    """Lock, read, chain and write every tenant of ``groups`` in two pipelined round trips.

    First every head is locked (in tenant order, so replicas cannot deadlock) and the batch's ids looked
    up; then, chained in memory, every tenant's rows are inserted and its head moved. With
    ``switch_tenant`` each tenant's statements run under its own ``parapet.tenant_id`` (row-level security).
    """
    driver = await _driver(session)
    tenants = sorted(groups)
    results: dict[str, list[AppendResult]] = {}
    now = datetime.now(UTC)
    async with driver.pipeline() as pipeline:
        reads = []
        for tenant_id in tenants:
            if switch_tenant:
                await driver.execute(_SET_TENANT, (tenant_id,))
            head = await driver.execute(_LOCK_HEAD, (tenant_id,))
            existing = await driver.execute(_EXISTING, (sorted({p.record_id for p in groups[tenant_id]}),))
            # Run once the head lock is held: an Erase of the tenant (which takes that lock first) has either
            # committed, marker and all, or waits for this append, and its UPDATE then reaches what it stores.
            users = sorted({p.columns["user_id"] for p in groups[tenant_id] if _holds_bodies(p)})
            erasures = await driver.execute(_ERASURES, (users,)) if users else None
            reads.append((head, existing, erasures))
        await pipeline.sync()
        for tenant_id, (head, existing, erasures) in zip(tenants, reads, strict=True):
            head_sequence, head_hash = await head.fetchone()
            stored = {row[0]: row for row in await existing.fetchall()}
            erased = dict(await erasures.fetchall()) if erasures is not None else {}
            batch = _drop_expired(groups[tenant_id], now)
            results[tenant_id], new_rows, head_sequence, head_hash = _chain(
                _apply_erasures(batch, erased) if erased else batch,
                int(head_sequence),
                bytes(head_hash),
                stored,
            )
            if new_rows:
                if switch_tenant:
                    await driver.execute(_SET_TENANT, (tenant_id,))
                await driver.execute(INSERT_SQL, {"tenant_id": tenant_id, "rows": _rows_json(new_rows)})
                await driver.execute(_MOVE_HEAD, (head_sequence, head_hash, tenant_id))
    return results


async def append_in(
    session: AsyncSession, tenant_id: str, batch: Sequence[PreparedRecord]
) -> list[AppendResult]:
    """Append ``batch`` to ``tenant_id``'s chain inside ``session`` (a tenant-scoped transaction)."""
    return (await _append_tenants(session, {tenant_id: batch}, switch_tenant=False))[tenant_id]


async def append_groups(
    database: Database, groups: Mapping[str, Sequence[PreparedRecord]]
) -> dict[str, list[AppendResult]]:
    """Append each tenant's records in one transaction for all of them (one commit, one fsync).

    Row-level security still confines every statement to one tenant: the tenant setting is switched
    before each tenant's statements, under the non-owner tenant role.
    """
    async with database.transaction() as session:
        await session.execute(text(f"SET LOCAL ROLE {TENANT_ROLE}"))
        return await _append_tenants(session, groups, switch_tenant=True)


async def append(database: Database, tenant_id: str, batch: Sequence[PreparedRecord]) -> list[AppendResult]:
    """Append ``batch`` in one tenant-scoped transaction (committed when this returns)."""
    async with tenant_scope(database, tenant_id) as session:
        return await append_in(session, tenant_id, batch)
