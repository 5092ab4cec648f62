"""The outbox relay through a long NATS outage: every event leaves once NATS is back, however long it was away."""

from __future__ import annotations

import asyncio
import time
import uuid

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from sqlalchemy import text

from parapet.embedded import EmbeddedNats
from parapet.events.usage import USAGE_STREAM, subject
from parapet.kit.bus import Bus
from parapet.kit.database import Database
from services.metering import ledger
from services.metering.relay import OutboxRelay
from tests.integration.metering.metering_support import migrated_database, new_tenant, usage

PENDING_ACKS = 16  # nats-py's default is 4,000: reached within a minute of an outage under load, seconds here


class _FewPendingAcks(Bus):
    """A bus whose JetStream context lets ``PENDING_ACKS`` publishes await their ack at once (nats-py's
    ``publish_async_max_pending``), so that the test reaches that limit in a few relay rounds."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._few = client.jetstream(publish_async_max_pending=PENDING_ACKS)

    @property
    def jetstream(self) -> JetStreamContext:
        return self._few


async def _settle(database: Database, tenant: str, indexes: range) -> None:
    async with database.transaction() as session:
        for index in indexes:
            assert await ledger.append(session, usage(tenant, f"r-{index}", "", 10, 5)) is not None


async def _unsent(database: Database, tenant: str) -> int:
    async with database.session() as session:
        return int(
            (
                await session.execute(
                    text("SELECT count(*) FROM outbox WHERE sent_time IS NULL AND subject = :s"),
                    {"s": subject(tenant)},
                )
            ).scalar_one()
        )


async def test_a_long_nats_outage_leaves_the_relay_publishing_once_nats_is_back(
    fresh_nats: EmbeddedNats, database_url: str
) -> None:
    tenant = new_tenant()
    # A small reconnect buffer (nats-py's is 2 MiB, a few thousand events): it fills in the outage's first rounds.
    client = await nats.connect(
        fresh_nats.url, pending_size=32 * 1024, reconnect_time_wait=0.1, max_reconnect_attempts=-1
    )
    bus = _FewPendingAcks(client)
    try:
        await bus.ensure_stream(USAGE_STREAM)
        async with migrated_database(database_url, "metering") as database:
            relay = OutboxRelay(database, bus, batch_size=50, interval=0.01, ack_timeout=0.1)
            await _settle(database, tenant, range(10))
            while await relay.publish_batch():
                pass
            assert await _unsent(database, tenant) == 0  # NATS up: published and marked

            fresh_nats.stop()
            await _settle(database, tenant, range(10, 110))
            # The outage, as the relay lives it: a round per wake-up (every settlement) or interval, each
            # finding NATS away. Nothing may be marked sent meanwhile.
            for _ in range(5 * PENDING_ACKS):
                assert await relay.publish_batch() == 0
            assert await _unsent(database, tenant) == 100

            fresh_nats.start()
            deadline = time.monotonic() + 30
            while await _unsent(database, tenant):
                assert time.monotonic() < deadline, (
                    f"{await _unsent(database, tenant)} events still unsent 30 s after NATS came back"
                )
                await relay.publish_batch()
                await asyncio.sleep(0.05)

            # Each event in the stream once: 110 messages on the tenant's subject, one per event id.
            info = await bus.jetstream.stream_info(USAGE_STREAM.name, subjects_filter=subject(tenant))
            assert info.state.subjects == {subject(tenant): 110}
            consumer = await bus.jetstream.subscribe(subject(tenant), durable=f"check-{uuid.uuid4().hex[:8]}")
            ids = set()
            for _ in range(110):
                message = await consumer.next_msg(timeout=5)
                ids.add(message.headers["Nats-Msg-Id"] if message.headers else "")
            assert len(ids) == 110
    finally:
        await client.close()
