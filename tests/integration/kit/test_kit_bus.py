"""JetStream helper: idempotent stream declaration, publish with headers and de-duplication by id."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

import pytest

from parapet.kit import timeouts
from parapet.kit.bus import MSG_ID_HEADER, Bus, MessageTooLarge, StreamSpec


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_url, name="kit-test")
    try:
        yield bus
    finally:
        await bus.close()


async def test_ensure_stream_updates_what_the_code_owns_and_keeps_the_operators_limits(bus: Bus) -> None:
    name = f"KIT_{uuid.uuid4().hex[:8].upper()}"
    spec = StreamSpec(
        name=name, subjects=(f"{name.lower()}.a.>",), max_age_seconds=3600, max_bytes=10_000_000
    )
    await bus.ensure_stream(spec)
    created = (await bus.jetstream.stream_info(name)).config
    assert (created.max_age, created.max_bytes, created.subjects) == (3600, 10_000_000, list(spec.subjects))
    await bus.ensure_stream(spec)  # idempotent
    # An operator tunes the limits (`nats stream edit`).
    tuned = dataclasses.replace(created, max_age=86_400, max_bytes=50_000_000)
    await bus.jetstream.update_stream(tuned)
    # A new release declares other subjects, another duplicate window and other limits.
    release = StreamSpec(
        name=name,
        subjects=(f"{name.lower()}.a.>", f"{name.lower()}.b.>"),
        max_age_seconds=7200,
        max_bytes=20_000_000,
        duplicate_window_seconds=60,
        description="v2",
    )
    await bus.ensure_stream(release)
    config = (await bus.jetstream.stream_info(name)).config
    assert config.subjects == list(release.subjects) and config.duplicate_window == 60
    assert config.description == "v2"
    assert (config.max_age, config.max_bytes) == (86_400, 50_000_000)  # the operator's, not the release's


async def test_publish_with_headers_and_dedup(bus: Bus) -> None:
    name = f"KIT_{uuid.uuid4().hex[:8].upper()}"
    subject = f"{name.lower()}.tenant-a"
    await bus.ensure_stream(StreamSpec(name=name, subjects=(f"{name.lower()}.>",)))
    first = await bus.publish(subject, b"event", msg_id="evt-1", headers={"ce-type": "parapet.usage.v1"})
    again = await bus.publish(subject, b"event", msg_id="evt-1", headers={"ce-type": "parapet.usage.v1"})
    assert not first.duplicate and again.duplicate
    assert (await bus.jetstream.stream_info(name)).state.messages == 1
    message = await bus.jetstream.get_msg(name, seq=first.seq)
    assert message.data == b"event"
    assert message.headers is not None
    assert message.headers[MSG_ID_HEADER] == "evt-1" and message.headers["ce-type"] == "parapet.usage.v1"
    assert await bus.is_healthy()


async def test_connect_fails_when_nats_is_unreachable_at_start() -> None:
    """A wrong URL fails the start with an error instead of hanging in a silent reconnect loop."""
    from nats.errors import NoServersError

    from parapet.embedded import free_port

    with pytest.raises(NoServersError):
        await timeouts.within(
            20, Bus.connect(f"nats://127.0.0.1:{free_port()}", reconnect_wait=0.1, connect_timeout=0.5)
        )


async def test_a_message_its_headers_take_over_the_limit_is_refused_and_the_connection_stays(
    bus: Bus,
) -> None:
    """nats-py checks the payload alone: a payload just under ``max_payload`` with headers was sent, the server
    answered "Maximum Payload Violation" and closed the connection. ``publish`` refuses it before sending."""
    name = f"KIT_{uuid.uuid4().hex[:8].upper()}"
    subject = f"{name.lower()}.big"
    await bus.ensure_stream(StreamSpec(name=name, subjects=(subject,)))
    limit = bus.client.max_payload
    with pytest.raises(MessageTooLarge) as refused:
        await bus.publish(subject, b"x" * (limit - 10), msg_id="big", headers={"ce-type": "test"})
    assert refused.value.limit == limit and refused.value.size > limit
    assert bus.client.is_connected
    ack = await timeouts.within(10, bus.publish(subject, b"small", msg_id="small"))
    assert ack.stream == name
