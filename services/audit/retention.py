"""Dropping bodies: the retention job (bodies past their retention) and erasure of a user's bodies.

Only ``prompt`` and ``response`` are cleared and ``erase_time`` set; the metadata, which holds the bodies'
hashes, and every hash of the chain stay as they were, so the chain still verifies afterwards. An erasure also
leaves a marker (``erasures``) that appends read, for the user's records still waiting in the AUDIT stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import text

from parapet.kit.database import Database
from services.audit.scope import tenant_scope
from services.audit.store import lock_head

_EXPIRED = text(
    """
    UPDATE records SET prompt = NULL, response = NULL, erase_time = :now
    WHERE (tenant_id, sequence) IN (
        SELECT tenant_id, sequence FROM records
        WHERE erase_time IS NULL AND body_expire_time IS NOT NULL AND body_expire_time <= :now
        LIMIT :limit
    )
    """
)


async def drop_expired_bodies(database: Database, now: datetime, *, batch: int = 5000) -> int:
    """Clear every body whose retention ended by ``now``, all tenants, in bounded transactions."""
    total = 0
    while True:
        # A cross-tenant job: runs as the owner, outside any caller's tenant scope.
        async with database.transaction() as session:
            result = await session.execute(_EXPIRED, {"now": now, "limit": batch})
        count = int(getattr(result, "rowcount", 0) or 0)
        total += count
        if count < batch:
            return total


# The erasure's time per user (the latest wins): a record of the user created before it that is stored later,
# having waited in the AUDIT stream, is stored without its bodies (store._apply_erasures).
_MARK = text(
    """
    INSERT INTO erasures (tenant_id, user_id, erase_time)
    VALUES (current_setting('parapet.tenant_id'), :user_id, now())
    ON CONFLICT (tenant_id, user_id) DO UPDATE SET erase_time = greatest(erasures.erase_time, EXCLUDED.erase_time)
    RETURNING erase_time
    """
)
# One batch of the user's stored bodies, at most :limit rows, walked in the order of the (tenant, user,
# create_time) index from the previous batch's last row on, so that each batch reads only rows not yet visited
# (10^5 interactions: linear, not quadratic). Only rows at or below :through (stored before the marker, see
# mark_erased). The outer erase_time check is re-evaluated on a row the retention job changed meanwhile, so that
# row is neither rewritten nor counted. Returns nothing when no row is left, else the count erased, the count
# read and the last row's key.
_ERASE_BATCH = text(
    """
    WITH batch AS (
        SELECT sequence, create_time FROM records
        WHERE user_id = :user_id AND kind = 'interaction' AND erase_time IS NULL
          AND (prompt IS NOT NULL OR response IS NOT NULL)
          AND sequence <= :through AND (create_time, sequence) > (:after_time, :after_sequence)
        ORDER BY create_time, sequence
        LIMIT :limit
    ), erased AS (
        UPDATE records SET prompt = NULL, response = NULL, erase_time = :erase_time
        FROM batch
        WHERE records.tenant_id = current_setting('parapet.tenant_id') AND records.sequence = batch.sequence
          AND records.erase_time IS NULL
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM erased) AS erased, (SELECT count(*) FROM batch) AS read, create_time, sequence
    FROM batch ORDER BY create_time DESC, sequence DESC LIMIT 1
    """
)
Key = tuple[datetime, int]  # (create_time, sequence): where a batch of erase_user_bodies resumes
ERASE_BATCH = (
    1000  # rows per erase transaction: its row locks and its time stay bounded however many the user has
)
_FIRST_KEY: Key = (datetime.min.replace(tzinfo=UTC), 0)  # before every (create_time, sequence)


@dataclass(frozen=True)
class Erasure:
    """A user's erasure marker as committed: its time, and the head's sequence when it was written."""

    erase_time: datetime
    through_sequence: int  # every record stored before the marker is at or below it


async def mark_erased(database: Database, tenant_id: str, user_id: str) -> Erasure:
    """Write (or move forward) ``user_id``'s erasure marker in a short transaction of its own, under the tenant's
    head lock, and commit it.

    Why this is enough for no record to keep its bodies: an append reads the markers while it holds the head lock
    (store._append_tenants). An append that read them before this marker existed therefore held the lock before
    this transaction took it, and committed before it: its rows are at or below ``through_sequence`` and visible to
    the batches of ``erase_user_bodies``, which run after this commit. An append that takes the lock after this
    commit finds the marker and stores the user's earlier interactions without bodies. So the lock is held only for
    this upsert, never while the user's rows are rewritten: that is long for a user with many interactions, and the
    stream consumer, which locks the heads of a batch's tenants in one transaction, would hold every tenant's
    records behind it."""
    async with tenant_scope(database, tenant_id) as session:
        through = await lock_head(session, tenant_id)
        erase_time = (await session.execute(_MARK, {"user_id": user_id})).scalar_one()
    return Erasure(erase_time, through)


async def _erase_batch(
    database: Database, tenant_id: str, user_id: str, erasure: Erasure, after: Key, limit: int
) -> tuple[int, Key | None]:
    """Clear one batch in its own transaction; returns how many it cleared and the key to resume from (None: done)."""
    parameters = {
        "user_id": user_id,
        "through": erasure.through_sequence,
        "erase_time": erasure.erase_time,
        "after_time": after[0],
        "after_sequence": after[1],
        "limit": limit,
    }
    async with tenant_scope(database, tenant_id) as session:
        row = (await session.execute(_ERASE_BATCH, parameters)).one_or_none()
    if row is None:
        return 0, None
    return int(row.erased), (row.create_time, int(row.sequence)) if row.read == limit else None


async def erase_user_bodies(
    database: Database, tenant_id: str, user_id: str, erasure: Erasure, *, batch: int = ERASE_BATCH
) -> int:
    """Clear the bodies of ``user_id``'s interactions stored before ``erasure`` was marked, ``batch`` rows per
    transaction (no lock on many rows for long); returns how many this call cleared. Rows already cleared are
    skipped, so after a failure part-way a new Erase (a new marker, at least as far along) finishes the job and
    counts what it cleared itself."""
    total = 0
    after: Key | None = _FIRST_KEY
    while after is not None:
        erased, after = await _erase_batch(database, tenant_id, user_id, erasure, after, batch)
        total += erased
    return total
