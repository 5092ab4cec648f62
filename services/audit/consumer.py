"""The durable consumer of the audit stream: batch, commit, then ack; nothing lost, nothing twice.

Every replica pulls from the one durable consumer, so JetStream hands each message to one of them. A batch
is grouped by tenant and appended in one transaction (each tenant's statements under its own row-level
security setting); only after the commit are the messages acked. A crash before the ack redelivers them, and the append finds their record ids stored
(idempotent by record id), so a redelivery never appends twice. Messages that can never be stored
(undecodable, wrong tenant, invalid, a record id reused with other content, or a record the database
refuses) are set aside: copied to the AUDIT_REJECTED stream with the reason, then terminated, and logged at
ERROR. Redelivering them forever would stall every record behind them; dropping them would lose them. A
record the database refuses fails its whole batch's transaction, so such a batch is stored again record by
record, to set aside only that one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
import psycopg
from google.protobuf.message import DecodeError
from nats.js.api import AckPolicy, ConsumerConfig
from sqlalchemy.exc import DataError

from parapet.audit.v1 import audit_record_pb2
from parapet.events.audit import (
    AUDIT_STREAM,
    REJECTED_FROM_HEADER,
    REJECTED_REASON_HEADER,
    REJECTED_SUBJECT_PREFIX,
    SUBJECT_PREFIX,
    tenant_of,
)
from parapet.kit import metrics
from parapet.kit.bus import Bus
from parapet.kit.database import Database
from parapet.kit.errors import InvalidArgument
from services.audit.canonical import PreparedRecord, prepare
from services.audit.store import append_groups

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BodyDefaults:
    """What a record's policy leaves unset: the body form and the days bodies are kept."""

    mode: int
    retention_days: int


class AuditConsumer:
    def __init__(
        self, database: Database, bus: Bus, defaults: BodyDefaults, *, durable: str, batch_size: int
    ) -> None:
        self._database = database
        self._bus = bus
        self._defaults = defaults
        self._durable = durable
        self._batch_size = batch_size

    async def _subscribe(self) -> Any:
        return await self._bus.jetstream.pull_subscribe(
            SUBJECT_PREFIX + "*",
            durable=self._durable,
            stream=AUDIT_STREAM.name,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30,
                max_deliver=-1,  # keep redelivering while the database is down: never drop
                max_ack_pending=max(1000, self._batch_size * 4),
            ),
        )

    async def _set_aside(self, msg: Any, why: str, record_id: str = "") -> None:
        """Keep ``msg`` in the rejected stream with ``why``, then take it off ours. Raises when the copy
        cannot be published: the message then stays (redelivered), never dropped."""
        log.error(
            "audit record set aside: %s",
            why,
            extra={"subject": msg.subject, "record_id": record_id, "reason": why},
        )
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.lower().startswith("nats-")}
        headers[REJECTED_REASON_HEADER] = why[:1000]
        headers[REJECTED_FROM_HEADER] = msg.subject
        await self._bus.publish(
            REJECTED_SUBJECT_PREFIX + (tenant_of(msg.subject) or "unknown"),
            msg.data,
            # A redelivery of the same message, set aside twice, is one copy.
            msg_id=f"audit-{msg.metadata.sequence.stream}",
            headers=headers,
        )
        await msg.term()
        metrics.record_audit("stream", "rejected")

    async def handle(self, messages: Sequence[Any]) -> None:
        """Store ``messages`` (one transaction) and ack them; raise, unacked, when storing fails."""
        groups: dict[str, list[tuple[Any, PreparedRecord]]] = {}
        for msg in messages:
            tenant = tenant_of(msg.subject)
            try:
                record = audit_record_pb2.AuditRecord.FromString(msg.data)
            except DecodeError:
                await self._set_aside(msg, "not an AuditRecord")
                continue
            if tenant is None or record.tenant_id != tenant:
                await self._set_aside(msg, "tenant_id does not match the subject", record.record_id)
                continue
            try:
                prepared = prepare(
                    record,
                    tenant,
                    default_mode=self._defaults.mode,
                    default_retention_days=self._defaults.retention_days,
                    owned=True,
                )
            except InvalidArgument as error:
                await self._set_aside(msg, str(error), record.record_id)
                continue
            groups.setdefault(tenant, []).append((msg, prepared))
        await self._store(groups)

    async def _store(self, groups: dict[str, list[tuple[Any, PreparedRecord]]]) -> None:
        try:
            stored = await append_groups(
                self._database,
                {tenant: [prepared for _, prepared in items] for tenant, items in groups.items()},
            )
        # SQLSTATE class 22 (raised by psycopg itself on the pipelined path): this data is the problem.
        except (DataError, psycopg.DataError) as error:
            if sum(len(items) for items in groups.values()) > 1:
                for tenant, items in groups.items():
                    for item in items:  # in stream order, as the batch would have appended them
                        await self._store({tenant: [item]})
                return
            ((_tenant, [(msg, prepared)]),) = groups.items()
            sqlstate = getattr(getattr(error, "orig", error), "sqlstate", None) or "unknown"
            await self._set_aside(msg, f"the database refuses it (SQLSTATE {sqlstate})", prepared.record_id)
            return
        for tenant, items in groups.items():
            results = stored[tenant]
            appended = duplicates = 0
            for (msg, prepared), result in zip(items, results, strict=True):
                if result.conflict:
                    await self._set_aside(
                        msg, "record_id already stored with other content", prepared.record_id
                    )
                    continue
                await msg.ack()
                if result.already_recorded:
                    duplicates += 1
                else:
                    appended += 1
            metrics.record_audit("stream", "appended", appended)
            metrics.record_audit("stream", "duplicate", duplicates)
        if groups:
            metrics.mark_audit_persisted(time.time())

    async def _fetch(self, subscription: Any) -> list[Any]:
        try:
            messages: list[Any] = await subscription.fetch(self._batch_size, timeout=1.0)
        except nats.errors.TimeoutError:
            return []
        return messages

    async def run(self) -> None:
        """Consume until cancelled; survives NATS and database outages by retrying with a pause.

        The next batch is fetched while the current one is being stored (batches are still stored one
        after the other, in stream order).
        """
        subscription: Any = None
        upcoming: asyncio.Future[list[Any]] | None = None
        last_info = 0.0
        try:
            while True:
                try:
                    if subscription is None:
                        subscription = await self._subscribe()
                    if upcoming is None:
                        upcoming = asyncio.ensure_future(self._fetch(subscription))
                    messages = await upcoming
                    upcoming = asyncio.ensure_future(self._fetch(subscription))
                    if messages:
                        await self._handle_or_nak(messages)
                    if time.monotonic() - last_info > 5:
                        last_info = time.monotonic()
                        info = await subscription.consumer_info()
                        metrics.set_audit_stream_pending(int(info.num_pending) + int(info.num_ack_pending))
                except asyncio.CancelledError:
                    raise
                except Exception:
                    upcoming = None  # a failed fetch: start afresh (unacked messages come back)
                    log.warning("audit consumer failed; retrying", exc_info=True)
                    await asyncio.sleep(1.0)
        finally:
            if upcoming is not None:
                upcoming.cancel()  # its messages, if any, are redelivered after ack_wait

    async def _handle_or_nak(self, messages: Sequence[Any]) -> None:
        try:
            await self.handle(messages)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Unacked messages come back after ack_wait anyway; nak after a pause brings them back sooner
            # without spinning while the database is down.
            log.warning("storing audit records failed; they will be redelivered", exc_info=True)
            await asyncio.sleep(1.0)
            for msg in messages:
                try:
                    await msg.nak()
                except Exception:
                    log.debug("nak failed (message already acked or connection lost)", exc_info=True)
