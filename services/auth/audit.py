"""Admin changes to the audit trail: an AuditRecord written in the changing transaction, relayed to NATS.

The outbox row commits with the change (or not at all), so no change goes unrecorded; the relay publishes
it to ``parapet.audit.v1.<tenant>`` (CloudEvents headers, ``Nats-Msg-Id`` = record id) and marks it sent
only after JetStream's ack. A crash in between republishes the same record id, which the stream's duplicate
window and the audit service's idempotent consumer absorb.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy.ext.asyncio import AsyncSession

from parapet.audit.v1 import audit_record_pb2
from parapet.events import audit as audit_events
from parapet.kit.bus import Bus
from parapet.kit.timeouts import wait_event
from services.auth.store import AuthStore

log = logging.getLogger(__name__)

SOURCE = "/parapet/auth"


async def write(session: AsyncSession, record: audit_record_pb2.AuditRecord) -> None:
    await AuthStore.add_outbox(
        session,
        record.record_id,
        record.tenant_id,
        audit_events.subject(record.tenant_id),
        record.SerializeToString(deterministic=True),
    )


class OutboxRelay:
    def __init__(
        self, store: AuthStore, bus: Bus, *, interval: float, retention: float = 86_400.0, batch: int = 100
    ) -> None:
        self._store = store
        self._bus = bus
        self._interval = interval
        self._retention = retention  # published rows are kept this long (for inspection), then pruned
        self._batch = batch
        self._last_prune = 0.0
        self.wake = asyncio.Event()  # set after a commit that wrote a record, to relay it at once

    async def relay_once(self) -> int:
        """Publish pending records; returns how many were acknowledged and marked sent."""
        pending = await self._store.pending_outbox(self._batch)
        sent: list[str] = []
        try:
            for record_id, subject, payload in pending:
                record = audit_record_pb2.AuditRecord.FromString(payload)
                await self._bus.publish(
                    subject, payload, msg_id=record_id, headers=audit_events.headers(record, SOURCE)
                )
                sent.append(record_id)
        finally:
            if sent:
                await self._store.mark_sent(sent)
        return len(sent)

    async def run(self) -> None:
        while True:
            try:
                while await self.relay_once() == self._batch:
                    pass
                if time.monotonic() - self._last_prune >= 60.0:
                    self._last_prune = time.monotonic()
                    await self._store.prune_sent(self._retention)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("audit outbox relay failed; retrying", exc_info=True)
            self.wake.clear()
            await wait_event(self.wake, self._interval)
