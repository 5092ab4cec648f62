"""VerifyChain: re-derive every link of a tenant's chain and check its signed checkpoints.

Per record, in sequence order: the sequence has no gap, ``previous_hash`` is the previous record's hash,
``record_hash`` = H(sequence, previous_hash, SHA-256(metadata)), the bodies still present hash to the
hashes in the metadata, and the indexed columns equal what the metadata says. Where a link breaks, a few
lookups tell which tampering it was (see ``_classify``); checkpoints catch what a re-hashed chain or a
truncated tail would otherwise hide. Rows past the head (and past every checkpoint) are no link of the chain
but would still be read as records, so the first of them is a break too. Reads run under the tenant's
row-level security.

Memory stays bounded however large the chain, its records or its checkpoints: rows are read in chunks cut by
count and bytes, with their bodies' hashes computed by PostgreSQL instead of the bodies, and the checkpoints of
the range in chunks as the scan reaches them (plus the newest, which bounds the chain and is returned).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import DecodeError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.audit.v1 import audit_record_pb2, chain_pb2
from parapet.kit.database import Database
from parapet.kit.errors import InvalidArgument
from services.audit import chunks
from services.audit.canonical import COLUMN_NAMES, ZERO_HASH, index_columns, moderation_counts, record_hash
from services.audit.scope import tenant_scope
from services.audit.signing import CheckpointSigner

Kind = chain_pb2.ChainBreakKind
_CHUNK = 5000
# The bodies' hashes, not the bodies: verification needs nothing else of them, and a chunk of 5,000 rows with their
# bodies could be gigabytes (each record may hold 3 MiB). What is read is cut by bytes as well (``chunks``), and the
# bodies are hashed after that cut: hashed in the inner SELECT, every statement read and hashed the bodies of all
# the rows its LIMIT let through (up to 5,000), most of them cut off and hashed again by the next statement.
_INDEXED = ", ".join(COLUMN_NAMES)
_ROW_SQL = text(
    chunks.bounded_sql(
        "SELECT sequence, record_id::text AS record_id, previous_hash, record_hash, metadata, prompt, response,"
        f" {_INDEXED}, octet_length(metadata) AS chunk_bytes"
        " FROM records WHERE sequence > :after AND sequence <= :end ORDER BY sequence LIMIT :limit",
        "sequence",
        "sequence, record_id, previous_hash, record_hash, metadata,"
        " encode(sha256(convert_to(prompt, 'UTF8')), 'hex') AS prompt_sha256,"
        " encode(sha256(convert_to(response, 'UTF8')), 'hex') AS response_sha256,"
        f" {_INDEXED}, chunk_rows",
    )
)
_FETCH_BYTES = 8 << 20  # about the metadata one statement reads


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


_COLUMNS = slice(7, 7 + len(COLUMN_NAMES))  # where COLUMN_NAMES are in _ROW_SQL's select list
_SUMMARY = COLUMN_NAMES.index("moderation_summary")  # compared by enum numbers (canonical.moderation_counts)


def _content_intact(row: Any) -> bool:
    """Bodies still stored match their hashes, and the indexed columns match the metadata."""
    try:
        record = audit_record_pb2.AuditRecord.FromString(bytes(row.metadata))
        derived = index_columns(record)
    except (DecodeError, ValueError, OverflowError):
        # No append wrote these bytes (they are decoded and their create_time checked before they are chained): a
        # rewrite whose hashes were recomputed. It once made VerifyChain fail INTERNAL instead of reporting it.
        return False
    body = record.interaction.body
    if row.prompt_sha256 is not None and row.prompt_sha256 != body.prompt_sha256:
        return False
    if row.response_sha256 is not None and row.response_sha256 != body.response_sha256:
        return False
    if record.record_id != row.record_id:
        return False
    # Aware datetimes compare as instants, whatever zone the session returned them in.
    stored, expected = tuple(row[_COLUMNS]), tuple(derived.values())
    if stored == expected:
        return True
    # The summary as another release wrote it (canonical.moderation_counts), all the other columns as derived.
    others = slice(None, _SUMMARY), slice(_SUMMARY + 1, None)
    if any(stored[part] != expected[part] for part in others):
        return False
    counts = moderation_counts(stored[_SUMMARY])
    return counts is not None and counts == moderation_counts(expected[_SUMMARY])


async def _rows(session: AsyncSession, start: int, end: int) -> AsyncIterator[Any]:
    after = start - 1
    while after < end:
        params = {"after": after, "end": end, "limit": _CHUNK, "budget": _FETCH_BYTES}
        found = chunks.chunk((await session.execute(_ROW_SQL, params)).all(), _CHUNK)
        for row in found.rows:
            yield row
        if found.exhausted:
            return
        after = int(found.rows[-1].sequence)


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


_CHECKPOINT_COLUMNS = "sequence, head_hash, create_time, signature, key_id"
_NEWEST_CHECKPOINT_SQL = text(f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY sequence DESC LIMIT 1")
_CHECKPOINTS_SQL = text(
    f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE sequence > :after AND sequence <= :end"
    " ORDER BY sequence LIMIT :limit"
)


class _SignedHeads:
    """The checkpoints of the range, read in chunks as the scan reaches their sequences, each signature checked
    once. Not all of the tenant's up front: there is one per minute of activity (half a million a year), and a
    verification of a few records read and checked every one of them."""

    def __init__(
        self, session: AsyncSession, tenant_id: str, signer: CheckpointSigner, start: int, last: int
    ) -> None:
        self._session = session
        self._tenant_id = tenant_id
        self._signer = signer
        self._after = start - 1  # the checkpoints up to here are read
        self._last = last
        self._chunk: list[Any] = []

    def check(self, cp: Any) -> Break | None:
        """A break at ``cp`` when its signature does not verify."""
        valid = self._signer.verify(
            self._tenant_id,
            int(cp.sequence),
            bytes(cp.head_hash),
            _utc(cp.create_time),
            bytes(cp.signature),
            cp.key_id,
        )
        return None if valid else Break(int(cp.sequence), "", Kind.CHAIN_BREAK_KIND_CHECKPOINT_INVALID)

    async def _next(self) -> Any:
        if not self._chunk and self._after < self._last:
            params = {"after": self._after, "end": self._last, "limit": _CHUNK}
            self._chunk = list(reversed((await self._session.execute(_CHECKPOINTS_SQL, params)).all()))
            self._after = int(self._chunk[0].sequence) if len(self._chunk) == _CHUNK else self._last
        return self._chunk[-1] if self._chunk else None

    async def through(self, sequence: int) -> tuple[Break | None, bytes | None]:
        """Check the checkpoints up to ``sequence``: the first whose signature fails, and the head hash signed at
        ``sequence`` itself (None when no checkpoint is there)."""
        signed = None
        while (cp := await self._next()) is not None and cp.sequence <= sequence:
            self._chunk.pop()
            invalid = self.check(cp)
            if invalid is not None:
                return invalid, None
            if cp.sequence == sequence:
                signed = bytes(cp.head_hash)
        return None, signed


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
        newest = (await session.execute(_NEWEST_CHECKPOINT_SQL)).one_or_none()
        newest_signed = int(newest.sequence) if newest is not None else 0
        head, beyond = (await session.execute(_HEAD_SQL, {"signed": newest_signed})).one()
        known = max(head, newest_signed)
        last = end or known
        if end > known or (known and start > last):
            raise InvalidArgument(
                f"the chain has {known} records",
                field_violations=[("start_sequence", f"range must lie within 1..{known}")],
                reason="CHAIN_RANGE_INVALID",
            )
        checks = _SignedHeads(session, tenant_id, signer, start, last)
        # The newest checkpoint sets how far the chain goes and is returned: checked whatever the range.
        newest_break = None if newest is None else checks.check(newest)
        checkpoint_break: Break | None = None  # the first checkpoint of the range whose signature fails
        before = await _link_at(session, start - 2)
        previous = await _link_at(session, start - 1)
        expected_previous = ZERO_HASH if start == 1 else (previous.record_hash if previous else b"")
        expected = start
        verified = 0
        scan_break: Break | None = None
        async for row in _rows(session, start, last):
            sequence = int(row.sequence)
            checkpoint_break, signed = await checks.through(sequence)
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
            if signed is not None and signed != stored_hash:
                scan_break = Break(sequence, row.record_id, Kind.CHAIN_BREAK_KIND_MODIFIED)
                break
            if checkpoint_break is not None:
                break
            before = previous
            previous = _Link(sequence, row.record_id, stored_hash)
            expected_previous = stored_hash
            expected += 1
            verified += 1
        if scan_break is None and checkpoint_break is None:
            # Checkpoints past the last row (a cut-off tail) are checked too.
            checkpoint_break, _ = await checks.through(last)
        if scan_break is None and checkpoint_break is None and expected <= last:
            # The rows end before the head or a signed checkpoint: the tail was cut off.
            scan_break = Break(expected, "", Kind.CHAIN_BREAK_KIND_TRUNCATED)
        inserted: Break | None = None
        if beyond is not None and last >= known:
            # A row past the head: appends move the head in the same transaction, so no append wrote it.
            link = await _link_at(session, int(beyond))
            inserted = Break(int(beyond), link.record_id if link else "", Kind.CHAIN_BREAK_KIND_INSERTED)
        first = _first(newest_break, checkpoint_break, scan_break, inserted)
        return Verification(
            intact=first is None,
            records_verified=verified,
            first_break=first,
            head_sequence=int(head),
            latest_checkpoint=_checkpoint(newest) if newest is not None else None,
        )
