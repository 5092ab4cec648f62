"""The sweeper's deletes of garbage rows: old rate counters, sent outbox rows, ended reservations, and budget
counters of windows that ended long ago.

Each call deletes at most one batch in its own short transaction, and the sweeper repeats it until none is left
(``parapet.kit.periodic.until_none_left``): a backlog (a table never pruned before this release, or a sweeper stopped for a day) is worked off
in many small transactions instead of one that holds its row locks, and keeps its snapshot, for minutes.
Every replica sweeps; ``SKIP LOCKED`` keeps two replicas from waiting on each other's batch.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import TextClause, text

from parapet.kit import periodic
from parapet.kit.database import Database
from services.metering.settings import MeteringSettings

BATCH = 5000
# The longest budget window, a calendar month (limits.budget_window): a counter row keeps only its window's
# start, so its end is at most this much later, whether the budget's window is a day or a month.
LONGEST_WINDOW = timedelta(days=31)

# Served by outbox_sent (migration 0003): the oldest sent rows first, by index order.
DELETE_SENT_OUTBOX = text(
    """
    DELETE FROM outbox WHERE id IN (
        SELECT id FROM outbox WHERE sent_time IS NOT NULL AND sent_time < now() - :keep
        ORDER BY sent_time LIMIT :batch FOR UPDATE SKIP LOCKED)
    """
)
# Served by reservations_ended (migration 0003). Only ended reservations: an active one is the expiry sweep's.
DELETE_ENDED_RESERVATIONS = text(
    """
    DELETE FROM reservations WHERE reservation_id IN (
        SELECT reservation_id FROM reservations WHERE state <> 'active' AND end_time < now() - :keep
        ORDER BY end_time LIMIT :batch FOR UPDATE SKIP LOCKED)
    """
)
# Older than the sliding window's previous minute, so no Reserve reads them again.
DELETE_OLD_RATE_COUNTERS = text(
    """
    DELETE FROM rate_counters WHERE (tenant_id, scope_key, window_start) IN (
        SELECT tenant_id, scope_key, window_start FROM rate_counters
        WHERE window_start < now() - interval '2 minutes' LIMIT :batch FOR UPDATE SKIP LOCKED)
    """
)

# Served by budget_counters_window (migration 0004): the oldest windows first, by index order.
DELETE_ENDED_BUDGET_COUNTERS = text(
    """
    DELETE FROM budget_counters WHERE (tenant_id, budget_id, scope_key, unit, window_start) IN (
        SELECT tenant_id, budget_id, scope_key, unit, window_start FROM budget_counters
        WHERE window_start < now() - :keep ORDER BY window_start LIMIT :batch FOR UPDATE SKIP LOCKED)
    """
)


def budget_counter_retention(settings: MeteringSettings) -> timedelta:
    """How long after its window started a budget counter may still be charged, so is kept.

    Reserve charges only the current window, and a Settle without a (known) reservation the current windows too;
    only a Settle of a reservation charges the window that reservation holds, whenever it comes. Such a
    reservation was made before its window ended (at most ``LONGEST_WINDOW`` after the start), ended at most
    the longest ttl later (the expiry sweep), and is deleted the reservation retention after that; a Settle
    after that is charged to the current windows (docs/metering.md). Past the sum nothing can charge the counter,
    and nothing reads it: GetUsage and soft-limit warnings read the current windows only. With the defaults,
    31 days + 1 hour + 7 days: a day window's counter is kept about a month longer than it needs, since the row
    does not say which kind of window it counts.
    """
    return (
        LONGEST_WINDOW
        + timedelta(seconds=settings.reservation_max_ttl_seconds)
        + timedelta(seconds=settings.reservation_retention_seconds)
    )


async def _delete_batch(database: Database, statement: TextClause, params: dict[str, object]) -> int:
    async with database.transaction() as session:
        result = await session.execute(statement, params)
    return int(getattr(result, "rowcount", 0) or 0)


async def delete_sent_outbox(database: Database, keep: timedelta, batch: int = BATCH) -> int:
    """Delete up to ``batch`` outbox rows sent more than ``keep`` ago; returns how many."""
    return await _delete_batch(database, DELETE_SENT_OUTBOX, {"keep": keep, "batch": batch})


async def delete_ended_reservations(database: Database, keep: timedelta, batch: int = BATCH) -> int:
    """Delete up to ``batch`` reservations that ended (settled, released, expired) more than ``keep`` ago."""
    return await _delete_batch(database, DELETE_ENDED_RESERVATIONS, {"keep": keep, "batch": batch})


async def delete_old_rate_counters(database: Database, batch: int = BATCH) -> int:
    """Delete up to ``batch`` rate counters older than the sliding window reads."""
    return await _delete_batch(database, DELETE_OLD_RATE_COUNTERS, {"batch": batch})


async def delete_ended_budget_counters(database: Database, keep: timedelta, batch: int = BATCH) -> int:
    """Delete up to ``batch`` budget counters whose window started more than ``keep`` ago."""
    return await _delete_batch(database, DELETE_ENDED_BUDGET_COUNTERS, {"keep": keep, "batch": batch})


async def prune(
    database: Database,
    *,
    outbox: timedelta,
    reservations: timedelta,
    budget_counters: timedelta,
    batch: int = BATCH,
) -> int:
    """Delete every garbage row, batch after batch; returns how many rows went. ``budget_counters``: see
    :func:`budget_counter_retention`; windows end at most once a day (UTC midnight), so most sweeps find none of
    those (one probe of the index)."""
    deletions = (
        (lambda: delete_old_rate_counters(database, batch), "old rate counters"),
        (lambda: delete_sent_outbox(database, outbox, batch), "sent outbox rows"),
        (lambda: delete_ended_reservations(database, reservations, batch), "ended reservations"),
        (
            lambda: delete_ended_budget_counters(database, budget_counters, batch),
            "budget counters of ended windows",
        ),
    )
    return sum([await periodic.until_none_left(delete, what)() for delete, what in deletions])
