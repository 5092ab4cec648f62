"""VerifyChain: re-derive every link of a tenant's chain and check its signed checkpoints.

Per record, in sequence order: the sequence has no gap, ``previous_hash`` is the previous record's hash,
``record_hash`` = H(sequence, previous_hash, SHA-256(metadata)), the bodies still present hash to the
hashes in the metadata, and the indexed columns equal what the metadata says. Where a link breaks, a few
lookups tell which tampering it was (see ``_classify``); checkpoints catch what a re-hashed chain or a
truncated tail would otherwise hide. Rows past the head (and past every checkpoint) are no link of the chain
but would still be read as records, so the first of them is a break too. Reads run under the tenant's
row-level security.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.audit.v1 import audit_record_pb2, chain_pb2
from parapet.kit.database import Database
from parapet.kit.errors import InvalidArgument
from services.audit.canonical import COLUMN_NAMES, ZERO_HASH, index_columns, record_hash, sha256_hex
from services.audit.scope import tenant_scope
from services.audit.signing import CheckpointSigner

Kind = chain_pb2.ChainBreakKind
_CHUNK = 5000
_ROW_SQL = text(
    "SELECT sequence, record_id::text AS record_id, previous_hash, record_hash, metadata, prompt, response, "
    + ", ".join(COLUMN_NAMES)
    + " FROM records WHERE sequence > :after AND sequence <= :end ORDER BY sequence LIMIT :limit"
)


# The head and the first row past both it and the newest checkpoint, read in one statement (one snapshot): read
# apart, a record appended between the two reads would look like a row slipped in past the head.
_HEAD_SQL = text(
    """
    SELECT h.sequence AS head,
           (SELECT min(sequence) FROM records WHERE sequence > greatest(h.sequence, :signed)) AS beyond
    FROM (SELECT coalesce((SELECT sequence FROM chain_heads), 0) AS sequence) AS h
    """
)


@dataclass(frozen=True)
class Break:
    sequence: int
    record_id: str
    kind: int


@dataclass(frozen=True)
class Verification:
    intact: bool
    records_verified: int
    first_break: Break | None
    head_sequence: int
    latest_checkpoint: chain_pb2.Checkpoint | None


@dataclass(frozen=True)
class _Link:
    sequence: int
    record_id: str
    record_hash: bytes


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


_FIRST_COLUMN = 7  # position of COLUMN_NAMES[0] in _ROW_SQL's select list


def _content_intact(row: Any) -> bool:
    """Bodies still stored match their hashes, and the indexed columns match the metadata."""
    record = audit_record_pb2.AuditRecord.FromString(bytes(row.metadata))
    body = record.interaction.body
    if row.prompt is not None and sha256_hex(row.prompt) != body.prompt_sha256:
        return False
    if row.response is not None and sha256_hex(row.response) != body.response_sha256:
        return False
    if record.record_id != row.record_id:
        return False
    # Aware datetimes compare as instants, whatever zone the session returned them in.
    return tuple(row[_FIRST_COLUMN:]) == tuple(index_columns(record).values())


async def _rows(session: AsyncSession, start: int, end: int) -> AsyncIterator[Any]:
    after = start - 1
    while after < end:
        chunk = (await session.execute(_ROW_SQL, {"after": after, "end": end, "limit": _CHUNK})).all()
        for row in chunk:
            yield row
        if len(chunk) < _CHUNK:
            return
        after = int(chunk[-1].sequence)


async def _link_at(session: AsyncSession, sequence: int) -> _Link | None:
    if sequence < 1:
        return None
    row = (
        await session.execute(
            text("SELECT record_id::text AS record_id, record_hash FROM records WHERE sequence = :s"),
            {"s": sequence},
        )
    ).one_or_none()
    return None if row is None else _Link(sequence, row.record_id, bytes(row.record_hash))


async def _classify(
    session: AsyncSession,
    row: Any,
    expected_previous: bytes,
    links: tuple[_Link | None, _Link | None],
    self_ok: bool,
) -> Break:
    """Why ``row``'s previous_hash does not point at the record before it."""
    sequence = int(row.sequence)
    before, previous = links
    later = (
        await session.execute(
            text("SELECT 1 FROM records WHERE record_hash = :h AND sequence > :s LIMIT 1"),
            {"h": bytes(row.previous_hash), "s": sequence},
        )
    ).one_or_none()
    if later is not None:  # it points at a record that now comes after it
        return Break(sequence, row.record_id, Kind.CHAIN_BREAK_KIND_REORDERED)
    following = (
        await session.execute(
            text("SELECT previous_hash FROM records WHERE sequence = :s"), {"s": sequence + 1}
        )
    ).one_or_none()
    if following is not None and bytes(following.previous_hash) == expected_previous:
        return Break(sequence, row.record_id, Kind.CHAIN_BREAK_KIND_INSERTED)  # the chain skips this row
    if before is not None and previous is not None and bytes(row.previous_hash) == before.record_hash:
        # This row links to the one two back: the one in between was slipped in.
        return Break(previous.sequence, previous.record_id, Kind.CHAIN_BREAK_KIND_INSERTED)
    if self_ok:
        # This row is as it was written, so the one before it was rewritten (and re-hashed).
        return Break(sequence - 1, previous.record_id if previous else "", Kind.CHAIN_BREAK_KIND_MODIFIED)
    return Break(sequence, row.record_id, Kind.CHAIN_BREAK_KIND_DELETED)  # renumbered after a deletion


def _checkpoint(row: Any) -> chain_pb2.Checkpoint:
    checkpoint = chain_pb2.Checkpoint(
        sequence=int(row.sequence),
        head_hash=bytes(row.head_hash),
        signature=bytes(row.signature),
        key_id=row.key_id,
    )
    checkpoint.create_time.FromDatetime(_utc(row.create_time))
    return checkpoint


def _first(*breaks: Break | None) -> Break | None:
    found = [b for b in breaks if b is not None]
    return min(found, key=lambda b: b.sequence) if found else None


async def verify_chain(
    database: Database, tenant_id: str, signer: CheckpointSigner, start: int = 0, end: int = 0
) -> Verification:
    if start < 0 or end < 0 or (end and end < max(start, 1)):
        raise InvalidArgument(
            "invalid sequence range",
            field_violations=[("end_sequence", "must be 0 or at least start_sequence; both non-negative")],
            reason="CHAIN_RANGE_INVALID",
        )
    start = max(start, 1)
    async with tenant_scope(database, tenant_id) as session:
        checkpoints = (
            await session.execute(
                text(
                    "SELECT sequence, head_hash, create_time, signature, key_id FROM checkpoints ORDER BY sequence"
                )
            )
        ).all()
        newest_signed = int(checkpoints[-1].sequence) if checkpoints else 0
        head, beyond = (await session.execute(_HEAD_SQL, {"signed": newest_signed})).one()
        known = max(head, newest_signed)
        last = end or known
        if end > known or (known and start > last):
            raise InvalidArgument(
                f"the chain has {known} records",
                field_violations=[("start_sequence", f"range must lie within 1..{known}")],
                reason="CHAIN_RANGE_INVALID",
            )
        checkpoint_break: Break | None = None
        wanted: dict[int, bytes] = {}
        for cp in checkpoints:
            valid = signer.verify(
                tenant_id,
                int(cp.sequence),
                bytes(cp.head_hash),
                _utc(cp.create_time),
                bytes(cp.signature),
                cp.key_id,
            )
            if not valid:
                checkpoint_break = _first(
                    checkpoint_break, Break(int(cp.sequence), "", Kind.CHAIN_BREAK_KIND_CHECKPOINT_INVALID)
                )
            elif start <= cp.sequence <= last:
                wanted[int(cp.sequence)] = bytes(cp.head_hash)
        before = await _link_at(session, start - 2)
        previous = await _link_at(session, start - 1)
        expected_previous = ZERO_HASH if start == 1 else (previous.record_hash if previous else b"")
        expected = start
        verified = 0
        scan_break: Break | None = None
        async for row in _rows(session, start, last):
            sequence = int(row.sequence)
            if sequence != expected:
                scan_break = Break(expected, "", Kind.CHAIN_BREAK_KIND_DELETED)
                break
            stored_previous, stored_hash = bytes(row.previous_hash), bytes(row.record_hash)
            self_ok = (
                record_hash(sequence, stored_previous, hashlib.sha256(bytes(row.metadata)).digest())
                == stored_hash
            )
            if stored_previous != expected_previous:
                scan_break = await _classify(session, row, expected_previous, (before, previous), self_ok)
                break
            if not self_ok or not _content_intact(row):
                scan_break = Break(sequence, row.record_id, Kind.CHAIN_BREAK_KIND_MODIFIED)
                break
            signed = wanted.get(sequence)
            if signed is not None and signed != stored_hash:
                scan_break = Break(sequence, row.record_id, Kind.CHAIN_BREAK_KIND_MODIFIED)
                break
            before = previous
            previous = _Link(sequence, row.record_id, stored_hash)
            expected_previous = stored_hash
            expected += 1
            verified += 1
        if scan_break is None and expected <= last:
            # The rows end before the head or a signed checkpoint: the tail was cut off.
            scan_break = Break(expected, "", Kind.CHAIN_BREAK_KIND_TRUNCATED)
        inserted: Break | None = None
        if beyond is not None and last >= known:
            # A row past the head: appends move the head in the same transaction, so no append wrote it.
            link = await _link_at(session, int(beyond))
            inserted = Break(int(beyond), link.record_id if link else "", Kind.CHAIN_BREAK_KIND_INSERTED)
        first = _first(checkpoint_break, scan_break, inserted)
        return Verification(
            intact=first is None,
            records_verified=verified,
            first_break=first,
            head_sequence=int(head),
            latest_checkpoint=_checkpoint(checkpoints[-1]) if checkpoints else None,
        )
