"""Publishing usage events again after NATS lost them: their outbox rows marked unsent, for the relay.

NATS restarted without its JetStream store drops every event it held, among them those the relay had already
marked sent but billing had not yet consumed; the ledger keeps them, the outbox keeps them for
``outbox_retention_seconds`` after they were sent. Marking those rows unsent makes the relay publish them again
with their own event id as ``Nats-Msg-Id``, and billing counts each event id once (``processed_events``).

Rows are chosen by when they were settled (``create_time``), not by when they were last sent: a settlement's
first processing by billing is never earlier than its settlement, so "settled no earlier than the replay window"
bounds how long ago billing can have recorded its id, however often it was replayed before (billing keeps
processed ids long enough for that, docs/metering.md). Since a row is sent after it is settled, every such row
lies in the ``outbox_sent`` index from ``start`` on, and the batches walk that index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import text

from parapet.kit.database import Database

BATCH = 1000
# The oldest start allowed is this much younger than the outbox's retention: the sweeper may delete rows at the
# very edge of it while the replay runs. The replay takes the oldest rows first, within its first batch.
MARGIN = timedelta(minutes=1)

_CLOCK = text("SELECT now(), now() - :keep")

# One batch, oldest sent first, after the cursor (sent_time, id) of the previous one. Only rows sent before
# the replay began: those the relay republishes meanwhile are sent after it and are not taken again.
MARK_BATCH = text(
    """
    WITH batch AS (
        SELECT id, sent_time FROM outbox
        WHERE sent_time IS NOT NULL AND (sent_time, id) > (:after_time, :after_id) AND sent_time < :began
          AND create_time >= :start
        ORDER BY sent_time, id LIMIT :batch
        FOR UPDATE
    )
    UPDATE outbox o SET sent_time = NULL FROM batch WHERE o.id = batch.id
    RETURNING batch.sent_time, batch.id
    """
)


@dataclass(frozen=True)
class Window:
    """The database's clock at the start of a replay and the oldest start it allows."""

    began: datetime
    earliest_start: datetime


async def window(database: Database, retention: timedelta) -> Window:
    """Read on the database's clock, the one the sweeper deletes by."""
    async with database.session() as session:
        now, oldest = (await session.execute(_CLOCK, {"keep": retention})).one()
    return Window(began=now, earliest_start=oldest + MARGIN)


async def mark_unsent(
    database: Database,
    start: datetime,
    began: datetime,
    *,
    batch: int = BATCH,
    after_batch: Callable[[], None] = lambda: None,
) -> int:
    """Mark unsent every sent outbox row settled at or after ``start`` and sent before ``began``, one batch per
    transaction (a day of events is never one long transaction); returns how many."""
    # A row is sent after it is settled, but the relay's now() is its transaction's start, which may precede
    # the settlement's commit by a moment: begin the walk a margin early; create_time decides.
    cursor: tuple[datetime, int] = (start - MARGIN, 0)
    total = 0
    while True:
        async with database.transaction() as session:
            rows = (
                await session.execute(
                    MARK_BATCH,
                    {
                        "after_time": cursor[0],
                        "after_id": cursor[1],
                        "began": began,
                        "start": start,
                        "batch": batch,
                    },
                )
            ).all()
        if not rows:
            return total
        total += len(rows)
        cursor = max((row[0], row[1]) for row in rows)
        after_batch()  # the relay may start on this batch while the next one is marked
        if len(rows) < batch:
            return total
