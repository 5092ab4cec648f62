"""The billing consumer: a durable JetStream pull consumer that applies UsageEvents to rollups exactly once.

Each round fetches a batch, applies it in ONE database transaction (processed ids + rollup sums, see
rollups.apply) and acknowledges the messages only after the commit. A crash before the commit leaves the
batch unacknowledged: JetStream redelivers it after ``ack_wait``. A crash after the commit but before the
acks redelivers events whose ids are already recorded: they are acknowledged without effect.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import nats.errors
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from parapet.events.usage import USAGE_STREAM
from parapet.kit.bus import Bus
from parapet.kit.database import Database
from parapet.usage.v1 import usage_event_pb2
from services.billing import rollups

log = logging.getLogger(__name__)


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
        self._bus = bus
        self._durable = durable
        self._batch_size = batch_size
        self._fetch_timeout = fetch_timeout
        self._config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
            max_deliver=-1,
        )
        self.applied = 0  # events newly counted by this process (for tests and benchmarks)

    async def subscribe(self) -> JetStreamContext.PullSubscription:
        return await self._bus.jetstream.pull_subscribe(
            USAGE_STREAM.subjects[0], durable=self._durable, stream=USAGE_STREAM.name, config=self._config
        )

    async def process(self, messages: list[Msg], *, ack: bool = True) -> int:
        """Apply one fetched batch in one transaction, then acknowledge it; returns the events newly counted."""
        events: list[usage_event_pb2.UsageEvent] = []
        good: list[Msg] = []
        for message in messages:
            try:
                event = usage_event_pb2.UsageEvent.FromString(message.data)
                event.event_id = str(uuid.UUID(event.event_id))  # canonical form: the idempotency key
            except (DecodeError, ValueError):
                # Not a UsageEvent with a UUID id: redelivering it can never succeed, so take it out of the
                # stream's way instead of blocking every batch behind it.
                log.error("invalid usage event terminated", extra={"subject": message.subject})
                await message.term()
                continue
            events.append(event)
            good.append(message)
        async with self._database.transaction() as session:
            fresh = await rollups.apply(session, events)
        self.applied += fresh
        if ack:
            # Acks only after the commit; a lost ack means a redelivery that the processed ids absorb.
            # One after the other, not gathered: no task per message, and the client writes them together.
            for message in good:
                await message.ack()
        return fresh

    async def run(self) -> None:
        """Fetch, apply and acknowledge forever, surviving NATS and database outages."""
        subscription: JetStreamContext.PullSubscription | None = None
        while True:
            try:
                if subscription is None:
                    subscription = await self.subscribe()
                messages = await subscription.fetch(self._batch_size, timeout=self._fetch_timeout)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("usage fetch failed, retrying: %r", error)
                await asyncio.sleep(0.5)
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
                    except Exception:  # NATS may be down too; ack_wait redelivers then
                        break
                await asyncio.sleep(0.5)
