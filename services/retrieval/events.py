"""DocumentsDeletedEvent: written to the outbox in the deleting transaction, published by the relay.

The event commits with the deletion (no deletion without its event, no event for a rolled-back one);
the relay publishes right after the commit and again every few seconds for anything a NATS outage left
behind. `Nats-Msg-Id` = event id, so a republish inside the stream's duplicate window is dropped;
consumers deduplicate beyond it (handling an event twice is harmless anyway). A NATS back without its store
gets the stream again from the first publish (``Bus.publish`` declares it again). An event larger than NATS takes
(1,000 ids of up to 512 characters can reach 2 MB; NATS's default limit is 1 MB, counting the headers) is split
in the outbox.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from nats.errors import MaxPayloadError
from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.events.documents import CE_TYPE, SUBJECT_PREFIX
from parapet.kit.bus import Bus, MessageTooLarge
from parapet.kit.database import Database
from parapet.kit.timeouts import wait_event
from parapet.retrieval.v1 import documents_deleted_event_pb2 as events_pb2
from services.retrieval import repository

log = logging.getLogger(__name__)

CE_SOURCE = "/parapet/retrieval"
#: The contract's bound on document ids per event.
MAX_IDS_PER_EVENT = 1000


async def record_deletion(
    session: AsyncSession,
    tenant_id: str,
    document_ids: Sequence[str],
    reason: int,
    *,
    requested_by: str,
    user_id: str = "",
) -> None:
    """Adds the events for `document_ids` (at most 1000 ids each) to the outbox, in the caller's transaction."""
    now = datetime.now(UTC)
    delete_time = Timestamp()
    delete_time.FromDatetime(now)
    for start in range(0, len(document_ids), MAX_IDS_PER_EVENT):
        event = events_pb2.DocumentsDeletedEvent(
            event_id=str(uuid.uuid4()),
            tenant_id=tenant_id,
            document_ids=list(document_ids[start : start + MAX_IDS_PER_EVENT]),
            reason=reason,  # type: ignore[arg-type]
            user_id=user_id,
            requested_by=requested_by,
            delete_time=delete_time,
        )
        await repository.add_outbox(
            session, event.event_id, tenant_id, SUBJECT_PREFIX + tenant_id, CE_TYPE, event.SerializeToString()
        )


async def _split(session: AsyncSession, row: Row[Any]) -> None:
    """Adds, in place of the outbox row of an event too large for NATS, two events of half its ids each (split
    again in turn if too large too); the caller deletes the row."""
    event = events_pb2.DocumentsDeletedEvent.FromString(bytes(row.payload))
    ids = list(event.document_ids)
    if len(ids) < 2:  # one id is at most 2 KB of UTF-8: only a NATS configured below that refuses it
        raise MaxPayloadError
    for part in (ids[: len(ids) // 2], ids[len(ids) // 2 :]):
        piece = events_pb2.DocumentsDeletedEvent()
        piece.CopyFrom(event)
        piece.event_id = str(uuid.uuid4())
        piece.ClearField("document_ids")
        piece.document_ids.extend(part)
        await repository.add_outbox(
            session, piece.event_id, row.tenant_id, row.subject, row.ce_type, piece.SerializeToString()
        )
    log.warning(
        "a documents-deleted event of %d ids is over NATS's message limit: split in two",
        len(ids),
        extra={"tenant": row.tenant_id},
    )


class OutboxRelay:
    """Publishes outbox rows to JetStream and deletes them once acknowledged."""

    def __init__(self, database: Database, bus: Bus, *, interval: float = 2.0, batch_size: int = 100) -> None:
        self._database = database
        self._bus = bus
        self._interval = interval
        self._batch_size = batch_size
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Publish soon (a deletion just committed)."""
        self._wake.set()

    async def publish_pending(self) -> int:
        """One pass over the outbox; returns the events published. Runs as the owner: it serves no caller
        and spans tenants."""
        published = 0
        while True:
            split = False
            async with self._database.transaction() as session:
                rows = (
                    await session.execute(
                        text(
                            "SELECT event_id, tenant_id, subject, ce_type, payload, create_time FROM outbox"
                            " ORDER BY create_time LIMIT :n FOR UPDATE SKIP LOCKED"
                        ),
                        {"n": self._batch_size},
                    )
                ).all()
                for row in rows:
                    headers = {
                        "ce-specversion": "1.0",
                        "ce-id": str(row.event_id),
                        "ce-source": CE_SOURCE,
                        "ce-type": row.ce_type,
                        "ce-time": row.create_time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                        "ce-subject": row.tenant_id,
                        "content-type": "application/protobuf",
                    }
                    try:
                        await self._bus.publish(
                            row.subject, bytes(row.payload), msg_id=str(row.event_id), headers=headers
                        )
                        published += 1
                    except MessageTooLarge:
                        # Refused on every retry: as the oldest row it held back every later event of every
                        # tenant (before 2026-12-06 only once nats-py refused it, by its payload alone; within
                        # its headers of the limit it was sent and cost the connection). Its halves take its
                        # place (new ids: this one was never stored).
                        await _split(session, row)
                        split = True
                    await session.execute(text("DELETE FROM outbox WHERE event_id = :e"), {"e": row.event_id})
            if len(rows) < self._batch_size and not split:
                return published

    async def run(self) -> None:
        while True:
            try:
                await self.publish_pending()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("documents-deleted events not published yet; retrying", exc_info=True)
            await wait_event(self._wake, self._interval)
            self._wake.clear()
