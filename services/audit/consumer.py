"""The durable consumer of the audit stream: batch, commit, then ack; nothing lost, nothing twice.

Every replica pulls from the one durable consumer, so JetStream hands each message to one of them. A batch
is grouped by tenant and appended in one transaction (each tenant's statements under its own row-level
security setting); only after the commit are the messages acked. A crash before the ack redelivers them, and the append finds their record ids stored
(idempotent by record id), so a redelivery never appends twice. Messages that can never be stored
(undecodable, wrong tenant, invalid, a record id reused with other content, or a record the database
refuses) are set aside: copied to the AUDIT_REJECTED stream with the reason, then terminated, and logged at
ERROR. Redelivering them forever would stall every record behind them; dropping them would lose them. A
record whose data the database refuses (a few SQLSTATEs of class 22) fails its whole batch's transaction, so
such a batch is halved until that record stands alone, and only it is set aside; any other database error
leaves the batch to be redelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from parapet.audit.v1 import audit_record_pb2
from parapet.events.audit import (
    AUDIT_STREAM,
    REJECTED_SUBJECT_PREFIX,
    SUBJECT_PREFIX,
    tenant_of,
)
from parapet.kit import dependency, metrics
from parapet.kit.bus import Bus
from parapet.kit.database import Database
from parapet.kit.durable import DurableConsumer
from parapet.kit.errors import InvalidArgument
from services.audit.canonical import PreparedRecord, prepare
from services.audit.set_aside import fit_copy
from services.audit.store import append_groups

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BodyDefaults:
    """What a record's policy leaves unset: the body form and the days bodies are kept."""

    mode: int
    retention_days: int


_SET_ASIDE_RETRY_SECONDS = 30.0


def set_aside_id(msg: Any) -> str:
    """The ``Nats-Msg-Id`` of ``msg``'s copy in AUDIT_REJECTED: the same for every delivery of that message (set
    aside twice, it is one copy), and never the same for two messages. The stream sequence alone restarts at 1
    when AUDIT is created again (an operator moving it to work-queue retention, a NATS that lost its store), and
    a new message's copy then fell within the duplicate window of an old one's and was dropped. The time the
    stream stored the message tells the two apart. Not the record id: an undecodable message has none, and two
    messages reusing one record id with different content are each to be kept."""
    stored = msg.metadata.timestamp  # when the stream stored the message: the same on every redelivery
    return f"audit-{msg.metadata.sequence.stream}-{round(stored.timestamp() * 1_000_000)}"


class AuditConsumer:
    def __init__(
        self, database: Database, bus: Bus, defaults: BodyDefaults, *, durable: str, batch_size: int
    ) -> None:
        self._database = database
        self._bus = bus
        self._defaults = defaults
        self._durable = durable
        self._batch_size = batch_size
        # Subscribing declares AUDIT and the durable again when they are gone (parapet.kit.durable). AUDIT_REJECTED,
        # declared at start, comes back with the first set-aside (``Bus.publish``): without it nothing could be set
        # aside, and a record that can never be stored would come back every 30 s for ever.
        self._consumer = DurableConsumer(
            bus,
            AUDIT_STREAM,
            SUBJECT_PREFIX + "*",
            ConsumerConfig(
                durable_name=durable,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30,
                max_deliver=-1,  # keep redelivering while the database is down: never drop
                max_ack_pending=max(1000, batch_size * 4),
            ),
            on_declared=self._check_retention,
        )

    def _check_retention(self, stream: StreamConfig) -> None:
        """Called each time the consumer declares AUDIT (at start, and after NATS lost it or an operator removed
        it, docs/deploy.md): an earlier release's stream kept everything it took."""
        # nats-py may leave the server's string as it came; absent means JetStream's default, limits.
        retention = RetentionPolicy(stream.retention or RetentionPolicy.LIMITS)
        if retention != RetentionPolicy.WORK_QUEUE:
            log.error(
                "the AUDIT stream has %s retention: it keeps every audit record, bodies included, after they "
                "are stored, out of reach of body retention and Erase; move it to a work queue as "
                "docs/deploy.md says (Moving the AUDIT stream to work-queue retention)",
                retention.value,
                extra={"stream": AUDIT_STREAM.name},
            )

    async def _set_aside(self, msg: Any, why: str, record_id: str = "") -> None:
        """Keep ``msg`` in the rejected stream with ``why``, then take it off ours. Raises when the copy
        cannot be published: the message then stays (redelivered), never dropped."""
        log.error(
            "audit record set aside: %s",
            why,
            extra={"subject": msg.subject, "record_id": record_id, "reason": why},
        )
        copy = fit_copy(
            msg.data,
            {k: v for k, v in (msg.headers or {}).items() if not k.lower().startswith("nats-")},
            reason=why,
            from_subject=msg.subject,
            msg_id=set_aside_id(msg),
            # What the server said at connect (NATS refuses a larger message by closing the connection).
            limit=self._bus.client.max_payload,  # connected: this message was just fetched
        )
        if copy.left_off:
            log.warning(
                "the set-aside copy of an audit record leaves off headers to fit the NATS message limit",
                extra={"record_id": record_id, "left_off": ", ".join(copy.left_off)},
            )
        if not copy.payload_kept:
            # Only after the server's limit was lowered below a message it had taken: the loss is explicit.
            log.error(
                "audit record set aside without its payload: larger than the NATS message limit; the copy "
                "holds its SHA-256",
                extra={"subject": msg.subject, "record_id": record_id, "bytes": len(msg.data)},
            )
        await self._bus.publish(
            REJECTED_SUBJECT_PREFIX + (tenant_of(msg.subject) or "unknown"),
            copy.payload,
            msg_id=copy.msg_id,
            headers=copy.headers or None,
        )
        await msg.term()
        metrics.record_audit("stream", "rejected")

    async def _set_aside_or_keep(self, msg: Any, why: str, record_id: str = "") -> None:
        """Set ``msg`` aside; when even that fails, it comes back later and the batch's others go on."""
        try:
            await self._set_aside(msg, why, record_id)
        except Exception:
            log.warning("setting an audit record aside failed; it will be redelivered", exc_info=True)
            with contextlib.suppress(Exception):
                await msg.nak(delay=_SET_ASIDE_RETRY_SECONDS)

    async def handle(self, messages: Sequence[Any]) -> None:
        """Store ``messages`` (one transaction, unless one is refused for its data) and ack them; set aside what
        can never be stored; raise, unacked, when storing fails."""
        batch: list[tuple[str, Any, PreparedRecord]] = []  # (tenant, message, record), in stream order
        for msg in messages:
            tenant = tenant_of(msg.subject)
            try:
                record = audit_record_pb2.AuditRecord.FromString(msg.data)
            except DecodeError:
                await self._set_aside_or_keep(msg, "not an AuditRecord")
                continue
            if tenant is None or record.tenant_id != tenant:
                await self._set_aside_or_keep(msg, "tenant_id does not match the subject", record.record_id)
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
                await self._set_aside_or_keep(msg, str(error), record.record_id)
                continue
            batch.append((tenant, msg, prepared))
        await self._store(batch)

    async def _store(self, batch: list[tuple[str, Any, PreparedRecord]]) -> None:
        """Append ``batch`` in one transaction and ack it; or, when the database refuses a record's data,
        around that record, set aside alone (``parapet.kit.dependency``; each tenant's records keep their
        order)."""

        async def set_aside(item: tuple[str, Any, PreparedRecord], sqlstate: str) -> None:
            _tenant, msg, prepared = item
            why = f"the database refuses it (SQLSTATE {sqlstate})"
            await self._set_aside_or_keep(msg, why, prepared.record_id)

        await dependency.apply_setting_aside_refused(batch, self._append_and_ack, set_aside)

    async def _append_and_ack(self, batch: Sequence[tuple[str, Any, PreparedRecord]]) -> None:
        groups: dict[str, list[tuple[Any, PreparedRecord]]] = {}
        for tenant, msg, prepared in batch:
            groups.setdefault(tenant, []).append((msg, prepared))
        stored = await append_groups(
            self._database,
            {tenant: [prepared for _, prepared in items] for tenant, items in groups.items()},
        )
        for tenant, items in groups.items():
            results = stored[tenant]
            appended = duplicates = 0
            for (msg, prepared), result in zip(items, results, strict=True):
                if result.conflict:
                    await self._set_aside_or_keep(
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

    async def run(self) -> None:
        """Consume until cancelled; survives NATS and database outages by retrying with a pause.

        The next batch is fetched while the current one is being stored (batches are still stored one
        after the other, in stream order).
        """
        upcoming: asyncio.Future[list[Any]] | None = None
        last_info = 0.0
        try:
            while True:
                try:
                    if upcoming is None:
                        upcoming = asyncio.ensure_future(self._consumer.fetch(self._batch_size, 1.0))
                    messages = await upcoming
                    upcoming = asyncio.ensure_future(self._consumer.fetch(self._batch_size, 1.0))
                    if messages:
                        await self._handle_or_nak(messages)
                    if time.monotonic() - last_info > 5:
                        last_info = time.monotonic()
                        info = await self._bus.jetstream.consumer_info(AUDIT_STREAM.name, self._durable)
                        metrics.set_audit_stream_pending(int(info.num_pending) + int(info.num_ack_pending))
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # Start afresh (unacked messages come back), subscription included: its consumer, or the
                    # stream, may be gone, and subscribing declares them again.
                    if upcoming is not None:
                        upcoming.cancel()
                    upcoming = None
                    await self._consumer.reset()
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
