"""The billing sweeper: deletes processed event ids once no delivery of their event can come any more.

``processed_events`` is billing's idempotency key, so an id may go only after every possible redelivery of its
event: JetStream's (the USAGE stream keeps a message for its max age, and a consumer created afresh reads it
all again) and metering's replays (ReplayUsageEvents republishes events settled within the outbox retention,
and each republished message then stays in the stream for its max age). ``processed_event_retention_seconds``
must therefore exceed the stream's max age plus metering's outbox retention (docs/metering.md); the settings
refuse one that does not exceed the stream's max age.

Deleted in batches, each its own short transaction, so a backlog never holds a long one against the consumer;
the app repeats them until none is left, every ``processed_event_sweep_interval_seconds`` (``parapet.kit.periodic``).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from parapet.kit.database import Database

BATCH = 5000

# Served by processed_events_process_time (migration 0002), oldest first.
DELETE_PROCESSED = text(
    """
    DELETE FROM processed_events WHERE event_id IN (
        SELECT event_id FROM processed_events WHERE process_time < now() - :keep
        ORDER BY process_time LIMIT :batch FOR UPDATE SKIP LOCKED)
    """
)


async def delete_processed_ids(database: Database, keep: timedelta, batch: int = BATCH) -> int:
    """Delete up to ``batch`` processed event ids recorded more than ``keep`` ago; returns how many."""
    async with database.transaction() as session:
        result = await session.execute(DELETE_PROCESSED, {"keep": keep, "batch": batch})
    return int(getattr(result, "rowcount", 0) or 0)
