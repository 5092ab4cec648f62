"""The billing consumer: a durable JetStream pull consumer that applies UsageEvents to rollups exactly once.

Each round fetches a batch, applies it in ONE database transaction (processed ids + rollup sums, see
rollups.apply) and acknowledges the messages only after the commit. A crash before the commit leaves the
batch unacknowledged: JetStream redelivers it after ``ack_wait``. A crash after the commit but before the
acks redelivers events whose ids are already recorded: they are acknowledged without effect.

Events that can never be applied are set aside (logged at ERROR with their id and stream sequence, then
terminated: never redelivered, still in the stream until its retention drops them) instead of blocking every
batch behind them forever: undecodable ones, those whose tenant is not their subject's (a publisher allowed
only its own subjects must not charge another tenant), and those whose figures the database refuses (a data exception,
SQLSTATE class 22, such as a rollup sum beyond bigint). Such an event fails its whole batch's transaction, so
the batch is halved until it stands alone; any other database error leaves the batch to be redelivered.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Sequence
from datetime import UTC

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.errors import MsgAlreadyAckdError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from parapet.events.usage import (
    MAX_MICROS,
    MAX_NAME_CHARS,
    MAX_NAMES_BYTES,
    MAX_TOKENS,
    USAGE_STREAM,
    names_too_long,
    tenant_of,
)
from parapet.kit import dependency, metrics
from parapet.kit.bus import Bus
from parapet.kit.database import Database
from parapet.kit.durable import DurableConsumer
from parapet.usage.v1 import usage_event_pb2
from services.billing import rollups

log = logging.getLogger(__name__)

Batch = list[tuple[Msg, usage_event_pb2.UsageEvent]]


_CURRENCY = re.compile(r"[A-Z]{3}")


def _problem(event: usage_event_pb2.UsageEvent) -> str | None:
    """Why ``event`` came from no settlement, or None. Metering settles non-negative figures within its ceilings, in
    its ISO 4217 currency, with names of at most 256 characters (docs/metering.md, "Figures"). Anything else would
    skew the rollups for ever (a negative cost lowers an invoice; an amount near 2^63 leaves no invoice preview
    that can carry its sum), or, a name too long to index, fail every batch it is in with an error that is no data
    exception, so that the batch, every tenant's events with it, came back for ever."""
    usage = event.usage
    tokens = (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
    if any(not 0 <= value <= MAX_TOKENS for value in tokens):
        return f"a token count outside [0, {MAX_TOKENS}]"
    if not 0 <= event.cost.amount_micros <= MAX_MICROS:
        return f"a cost outside [0, {MAX_MICROS}] micros"
    if not _CURRENCY.fullmatch(event.cost.currency_code):
        return "a currency_code that is no ISO 4217 code"
    names = (event.model, event.provider, event.feature)
    if any(len(name) > MAX_NAME_CHARS for name in names):
        return f"a model, provider or feature longer than {MAX_NAME_CHARS} characters"
    if names_too_long(*names):
        return f"a model, provider and feature of more than {MAX_NAMES_BYTES} bytes together (no index takes them)"
    return None


def _decode(message: Msg) -> usage_event_pb2.UsageEvent | None:
    """The UsageEvent of ``message`` with its id in canonical form (the idempotency key); None when it is not
    one that can ever be applied (not a UsageEvent, an id that is no UUID, no occur_time or one out of range)."""
    try:
        event = usage_event_pb2.UsageEvent.FromString(message.data)
        event.event_id = str(uuid.UUID(event.event_id))
        if not event.HasField("occur_time"):  # the rollup's day: 1970-01-01 until 2026-12-06, in no invoice
            return None
        event.occur_time.ToDatetime(UTC)  # raises for a time no calendar holds
    except (DecodeError, ValueError):
        return None
    return event


class UsageConsumer:
    def __init__(
        self,
        database: Database,
        bus: Bus,
        *,
        durable: str,
        batch_size: int,
        fetch_timeout: float,
        ack_wait: float,
        max_ack_pending: int,
    ) -> None:
        self._database = database
        self._batch_size = batch_size
        self._fetch_timeout = fetch_timeout
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
            max_deliver=-1,
        )
        # Subscribing declares the stream and the durable again after NATS lost them (parapet.kit.durable).
        self._consumer = DurableConsumer(bus, USAGE_STREAM, USAGE_STREAM.subjects[0], config)
        self.applied = 0  # events newly counted by this process (for tests and benchmarks)

    async def subscribe(self) -> JetStreamContext.PullSubscription:
        return await self._consumer.subscribe()

    async def process(self, messages: list[Msg], *, ack: bool = True) -> int:
        """Apply one fetched batch in one transaction, then acknowledge it; returns the events newly counted."""
        batch: Batch = []
        for message in messages:
            event = _decode(message)
            if event is None:
                await _set_aside(
                    message, "", "not a UsageEvent with a UUID id and a valid occur_time", kind="undecodable"
                )
            elif (problem := _problem(event)) is not None:
                await _set_aside(message, event.event_id, problem, kind="out_of_bounds")
            elif event.tenant_id != tenant_of(message.subject):
                await _set_aside(
                    message, event.event_id, "tenant_id does not match the subject", kind="mismatched"
                )
            else:
                batch.append((message, event))
        fresh, applied = await self._apply(batch)
        self.applied += fresh
        if ack:
            # Acks only after the commit; a lost ack means a redelivery that the processed ids absorb.
            # One after the other, not gathered: no task per message, and the client writes them together.
            for message in applied:
                await message.ack()
        return fresh

    async def _apply(self, batch: Batch) -> tuple[int, list[Msg]]:
        """Apply ``batch`` in one transaction, or around the events whose data the database refuses, set aside
        (``parapet.kit.dependency``). Returns the events newly counted and the messages applied (committed,
        to be acknowledged)."""
        fresh = 0
        applied: list[Msg] = []

        async def apply(part: Sequence[tuple[Msg, usage_event_pb2.UsageEvent]]) -> None:
            nonlocal fresh
            async with self._database.transaction() as session:
                fresh += await rollups.apply(session, [event for _, event in part])
            applied.extend(message for message, _ in part)

        async def set_aside(item: tuple[Msg, usage_event_pb2.UsageEvent], sqlstate: str) -> None:
            message, event = item
            why = f"the database refuses it (SQLSTATE {sqlstate})"
            await _set_aside(message, event.event_id, why, kind="refused")

        await dependency.apply_setting_aside_refused(batch, apply, set_aside)
        return fresh, applied

    async def run(self) -> None:
        """Fetch, apply and acknowledge forever, surviving NATS and database outages."""
        while True:
            try:
                messages = await self._consumer.fetch(self._batch_size, self._fetch_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # The subscription is dropped: the next fetch subscribes again (the durable consumer, or the
                # stream, may be gone with a NATS that lost its store).
                log.warning("usage fetch failed, subscribing again: %r", error)
                await asyncio.sleep(0.5)
                continue
            if not messages:
                continue
            try:
                await self.process(messages)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Unacknowledged: JetStream redelivers the batch after ack_wait; nak asks for it sooner.
                log.exception("applying a usage batch failed; it will be redelivered")
                for message in messages:
                    try:
                        await message.nak(delay=1.0)
                    except MsgAlreadyAckdError:
                        # Set aside (terminated) before the failure. Not NATS being down: stopping here left
                        # every event behind it to wait for ack_wait after the database was back.
                        continue
                    except Exception:  # NATS may be down too; ack_wait redelivers then
                        break
                await asyncio.sleep(0.5)


async def _set_aside(message: Msg, event_id: str, why: str, *, kind: str) -> None:
    """Take an event that can never be applied out of the stream's way: terminated, so JetStream never
    redelivers it (it stays in the stream, by its sequence, until retention drops it; the ledger keeps the
    settlement). Redelivering it forever would block every batch behind it."""
    log.error(
        "usage event set aside: %s",
        why,
        extra={
            "subject": message.subject,
            "event_id": event_id,
            "stream_sequence": message.metadata.sequence.stream,
            "reason": why,
        },
    )
    await message.term()
    metrics.record_billing_set_aside(kind)
