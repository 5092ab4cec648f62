"""The billing sweeper: deletes processed event ids once no delivery of their event can come any more.

``processed_events`` is billing's idempotency key, so an id may go only after every possible redelivery of its
event: JetStream's (the USAGE stream keeps a message for its max age, and a consumer created afresh reads it
all again) and metering's replays (ReplayUsageEvents republishes events settled within the outbox retention,
and each republished message then stays in the stream for its max age). ``processed_event_retention_seconds``
must therefore exceed the stream's max age plus metering's outbox retention (docs/metering.md); the settings
refuse one that does not exceed the stream's declared max age. The stream's limits are the operator's once it
exists (``Bus.ensure_stream`` keeps them), so each sweep reads the max age the stream has now: one an operator
raised lengthens the retention by as much (``keep_for``), and a stream that keeps messages for ever keeps the ids
for ever. Until 2026-12-06 a stream raised to 30 days delivered a 10-day-old message to a durable created afresh
after its id was deleted at 9: counted twice.

Deleted in batches, each its own short transaction, so a backlog never holds a long one against the consumer;
the app repeats them until none is left, every ``processed_event_sweep_interval_seconds`` (``parapet.kit.periodic``).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import text

from parapet.events.usage import USAGE_STREAM
from parapet.kit import periodic
from parapet.kit.bus import Bus
from parapet.kit.database import Database
from parapet.kit.logging import OncePer

log = logging.getLogger(__name__)

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


def keep_for(retention: timedelta, stream_max_age: float | None) -> timedelta | None:
    """How long processed ids must be kept while the USAGE stream keeps messages ``stream_max_age`` seconds (None
    or 0: no age limit): ``retention``, lengthened by as much as the stream's max age exceeds the declared one (the
    part of ``retention`` beyond the stream's age, metering's replay window and a margin, stays); None, keep every
    id, while the stream has no age limit."""
    if not stream_max_age or stream_max_age <= 0:
        return None
    declared = USAGE_STREAM.max_age_seconds or 0.0
    return retention + timedelta(seconds=max(0.0, stream_max_age - declared))


class ProcessedIdSweeper:
    """One sweep every interval (``parapet.kit.periodic``): reads the USAGE stream's max age, then deletes the ids
    past the retention it calls for, in batches until none is left. Deletes nothing while that age is unknown
    (NATS unreachable): an id kept a little longer costs a row, one deleted too early a double count."""

    def __init__(self, database: Database, bus: Bus, retention: timedelta) -> None:
        self._database = database
        self._bus = bus
        self._retention = retention
        self._warned = OncePer(3600.0)

    async def sweep(self) -> int:
        try:
            info = await self._bus.jetstream.stream_info(USAGE_STREAM.name)
        except Exception as error:
            if self._warned.due("unknown"):
                log.warning(
                    "processed event ids not swept: the USAGE stream's max age is unknown (%r)", error
                )
            return 0
        keep = keep_for(self._retention, info.config.max_age)
        if keep is None:
            if self._warned.due("forever"):
                log.error(
                    "the USAGE stream keeps messages without an age limit: processed event ids are never "
                    "deleted (a durable created afresh reads every message again); give it a max age"
                )
            return 0
        if keep > self._retention and self._warned.due(f"longer {keep}"):
            log.warning(
                "the USAGE stream's max age exceeds the declared %.0f s: processed event ids are kept %.0f s",
                USAGE_STREAM.max_age_seconds or 0.0,
                keep.total_seconds(),
            )
        return await periodic.until_none_left(
            lambda: delete_processed_ids(self._database, keep), "processed event ids"
        )()
