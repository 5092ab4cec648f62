"""A NATS back without its store (an emptyDir, a wiped volume) has no streams and no durable consumers: the bus
declares a publish's stream again, and a durable consumer subscribes again with its own configuration."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator

import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NoStreamResponseError, NotFoundError

from parapet.embedded import EmbeddedNats
from parapet.kit import timeouts
from parapet.kit.bus import Bus, StreamSpec
from parapet.kit.durable import DurableConsumer

SPEC = StreamSpec(
    name="RECOVERY", subjects=("recovery.v1.*", "recovery.extra.>"), duplicate_window_seconds=30
)


@pytest.fixture
async def bus(fresh_nats: EmbeddedNats) -> AsyncIterator[Bus]:
    bus = await Bus.connect(fresh_nats.url, name="kit-recovery-test")
    try:
        yield bus
    finally:
        await bus.close()


async def lose_store(nats: EmbeddedNats) -> None:
    await asyncio.to_thread(nats.stop)
    await asyncio.to_thread(shutil.rmtree, nats.store_dir)
    await asyncio.to_thread(nats.start)


async def until_connected(bus: Bus) -> None:
    async def connected() -> None:
        while True:
            if bus.client.is_connected:
                return
            await asyncio.sleep(0.05)

    await timeouts.within(30, connected())


async def test_a_publish_after_nats_lost_its_store_declares_its_stream_again_and_is_stored(
    bus: Bus, fresh_nats: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    await bus.ensure_stream(SPEC)
    await bus.publish("recovery.v1.acme", b"before", msg_id="m-1")
    await lose_store(fresh_nats)
    await until_connected(bus)
    with caplog.at_level(logging.WARNING, logger="parapet.kit.bus"):
        ack = await bus.publish("recovery.extra.eu.acme", b"after", msg_id="m-2")
    assert ack.stream == SPEC.name and ack.seq == 1  # a new stream: the old one's message is gone with it
    config = (await bus.jetstream.stream_info(SPEC.name)).config
    assert config.subjects == list(SPEC.subjects) and config.duplicate_window == 30  # the spec, as declared
    declared = [
        r for r in caplog.records if r.levelno == logging.WARNING and "declared again" in r.getMessage()
    ]
    assert len(declared) == 1 and getattr(declared[0], "stream", None) == SPEC.name
    # Once back, the stream takes publishes as before: nothing is declared again.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="parapet.kit.bus"):
        assert not (await bus.publish("recovery.v1.acme", b"again", msg_id="m-3")).duplicate
    assert not [r for r in caplog.records if "declared again" in r.getMessage()]


async def test_a_publish_no_declared_stream_covers_still_fails(bus: Bus, fresh_nats: EmbeddedNats) -> None:
    await bus.ensure_stream(SPEC)
    await lose_store(fresh_nats)
    await until_connected(bus)
    for subject in ("recovery.v2.acme", "recovery.v1.acme.eu", "recovery.extra"):
        with pytest.raises(NoStreamResponseError):
            await bus.publish(subject, b"nowhere")
    with pytest.raises(NotFoundError):
        await bus.jetstream.stream_info(SPEC.name)  # nothing declared for those subjects


async def test_a_durable_consumer_comes_back_with_its_configuration_after_nats_lost_its_store(
    bus: Bus, fresh_nats: EmbeddedNats
) -> None:
    config = ConsumerConfig(
        durable_name="recovery-worker", ack_policy=AckPolicy.EXPLICIT, ack_wait=7, max_deliver=5
    )
    consumer = DurableConsumer(bus, SPEC, "recovery.v1.*", config)
    assert await consumer.fetch(10, 0.2) == []  # a timeout is no failure: nothing came
    await bus.publish("recovery.v1.acme", b"before")
    [message] = await consumer.fetch(10, 5)
    await message.ack()
    await lose_store(fresh_nats)
    await until_connected(bus)
    await bus.publish("recovery.v1.acme", b"after")  # declares the stream again, not the durable

    async def next_messages() -> list[bytes]:
        while True:
            try:
                if messages := await consumer.fetch(10, 1):
                    return [m.data for m in messages]
            except Exception:
                await asyncio.sleep(0.2)  # the rule: the failed fetch dropped the subscription

    assert await timeouts.within(30, next_messages()) == [b"after"]
    info = await bus.jetstream.consumer_info(SPEC.name, "recovery-worker")
    assert (info.config.ack_wait, info.config.max_deliver) == (7, 5)
    assert info.config.filter_subject == "recovery.v1.*"
