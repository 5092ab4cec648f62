"""A durable consumer that exists already gets the configuration a new release (or new settings) gives it, where
JetStream lets it change; what JetStream cannot change is logged, and the consumer bound to as it is."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from parapet.kit.bus import Bus, StreamSpec
from parapet.kit.durable import DurableConsumer


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_url, name="kit-durable-test")
    try:
        yield bus
    finally:
        await bus.close()


def a_stream() -> StreamSpec:
    name = f"KIT_{uuid.uuid4().hex[:8].upper()}"
    return StreamSpec(name=name, subjects=(f"{name.lower()}.>",))


async def test_an_existing_durable_takes_a_new_ack_wait_and_max_ack_pending(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    spec = a_stream()
    subject = spec.subjects[0]
    first = ConsumerConfig(
        durable_name="worker", ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_ack_pending=100, max_deliver=-1
    )
    old = DurableConsumer(bus, spec, subject, first)
    assert await old.fetch(1, 0.1) == []
    await old.reset()
    # The next release (or an operator's new settings) waits longer for acks and allows more in flight.
    second = ConsumerConfig(
        durable_name="worker",
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=300,
        max_ack_pending=500,
        max_deliver=-1,
    )
    new = DurableConsumer(bus, spec, subject, second)
    await bus.publish(spec.name.lower() + ".a", b"one")
    [message] = await new.fetch(1, 5)
    await message.ack()
    config = (await bus.jetstream.consumer_info(spec.name, "worker")).config
    assert (config.ack_wait, config.max_ack_pending, config.max_deliver) == (300, 500, -1)
    assert config.filter_subject == subject
    # Subscribing again with the same configuration changes nothing.
    await new.reset()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="parapet.kit.durable"):
        assert await new.fetch(1, 0.1) == []
    assert not caplog.records


async def test_a_change_jetstream_refuses_is_logged_and_the_durable_still_consumes(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    spec = a_stream()
    subject = spec.subjects[0]
    old = DurableConsumer(
        bus,
        spec,
        subject,
        ConsumerConfig(durable_name="worker", deliver_policy=DeliverPolicy.ALL, ack_wait=30),
    )
    assert await old.fetch(1, 0.1) == []
    await old.reset()
    new = DurableConsumer(
        bus,
        spec,
        subject,
        ConsumerConfig(durable_name="worker", deliver_policy=DeliverPolicy.NEW, ack_wait=60),
    )
    await bus.publish(spec.name.lower() + ".a", b"one")
    with caplog.at_level(logging.ERROR, logger="parapet.kit.durable"):
        [message] = await new.fetch(1, 5)
    await message.ack()
    refused = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(refused) == 1 and "deliver_policy" in refused[0].getMessage()
    config = (await bus.jetstream.consumer_info(spec.name, "worker")).config
    # What could change changed; what could not is the existing durable's.
    assert (config.deliver_policy, config.ack_wait) == (DeliverPolicy.ALL, 60)
