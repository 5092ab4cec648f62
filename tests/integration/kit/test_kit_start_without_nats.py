"""A service starts and serves while NATS is down, and connects (streams declared) when NATS comes.

Until 2026-12-06 the start made three connection attempts and then failed: during a NATS outage every pod that
restarted or was scaled out crash-looped, while the pods already running served on (their calls do without NATS:
events wait in outboxes, consumers pause).
"""

from __future__ import annotations

import asyncio
import time

import grpc.aio
import pytest
from grpc_health.v1 import health_pb2
from nats.errors import Error as NatsError
from nats.errors import NoServersError

from parapet.embedded import EmbeddedNats, free_port
from parapet.kit import timeouts
from parapet.kit.bus import Bus, StreamSpec
from parapet.kit.health import DEPENDENCIES
from parapet.kit.testing import fast_settings, generic_app, health_status, running
from tests.integration.kit.test_kit_health_dependencies import wait_for_dependencies

SERVICE = "test.v1.Late"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
STREAM = StreamSpec(name="LATE_TEST", subjects=("late.test.>",))
DECLARED_LATER = StreamSpec(name="LATE_LATER", subjects=("late.later.>",))


async def test_a_service_started_while_nats_is_down_serves_and_connects_when_nats_comes(
    fresh_nats: EmbeddedNats,
) -> None:
    await asyncio.to_thread(fresh_nats.stop)
    app = generic_app(name="latenats", service_names=(SERVICE,), uses_nats=True, streams=(STREAM,))
    settings = fast_settings(
        nats_url=fresh_nats.url, nats_start_wait_seconds=0.5, nats_reconnect_wait_seconds=0.1
    )
    async with (
        running(app, settings) as (server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        assert await health_status(channel) == SERVING and await health_status(channel, SERVICE) == SERVING
        assert await health_status(channel, DEPENDENCIES) == NOT_SERVING
        bus = server.resources.require_bus()
        assert not bus.ready
        # Publishing before the first connection fails at once (UNAVAILABLE to a caller, a retry for a relay),
        # instead of being buffered and sent whenever NATS comes, long after the caller gave up on it.
        with pytest.raises(NoServersError):
            await timeouts.within(1, bus.publish("late.test.early", b"early", msg_id="early"))
        await bus.declare(DECLARED_LATER)  # a service's register declaring a stream of its own: it goes on

        await asyncio.to_thread(fresh_nats.start)

        await wait_for_dependencies(channel, SERVING, within=15)
        await timeouts.within(15, bus.wait_ready())
        assert (await bus.jetstream.stream_info(STREAM.name)).config.subjects == list(STREAM.subjects)
        assert (await bus.jetstream.stream_info(DECLARED_LATER.name)).config.subjects == list(
            DECLARED_LATER.subjects
        )
        ack = await bus.publish("late.test.after", b"after", msg_id="after")
        assert ack.stream == STREAM.name
        # Nothing of the failed early publish was kept to be sent later.
        assert (await bus.jetstream.stream_info(STREAM.name)).state.messages == 1


async def test_a_service_without_nats_stops_promptly(fresh_nats: EmbeddedNats) -> None:
    """Closing a bus still connecting cancels the connection attempts instead of draining for its bound."""
    await asyncio.to_thread(fresh_nats.stop)
    app = generic_app(name="latestop", service_names=(SERVICE,), uses_nats=True, streams=(STREAM,))
    settings = fast_settings(
        nats_url=fresh_nats.url, nats_start_wait_seconds=0.2, nats_reconnect_wait_seconds=0.1
    )
    async with running(app, settings) as (server, _port):
        bus = server.resources.require_bus()
        assert not bus.ready and bus.max_payload is None
        with pytest.raises(NoServersError):
            bus.jetstream  # noqa: B018  (the property is what is tested)
    started = time.monotonic()
    await bus.close()  # again, after the server's own close: nothing left to do
    assert time.monotonic() - started < 1


async def test_requests_while_handshakes_fail_leave_the_bus_working_once_nats_answers(
    fresh_nats: EmbeddedNats,
) -> None:
    """A port that accepts and drops connections (a proxy, a TLS or authorization error) fails each handshake,
    after which nats-py closes its client until the next attempt. Until 2026-12-06 the service already held that
    client: a consumer's fetch meanwhile (a JetStream request) left it without a reply subscription for good, and
    once NATS answered the bus never declared its streams nor got any publish acknowledged. Now the bus gets a
    client only once connected, and before that every request fails at once."""
    await asyncio.to_thread(fresh_nats.stop)
    port = int(fresh_nats.url.rsplit(":", 1)[1])

    async def drop(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    dropper = await asyncio.start_server(drop, "127.0.0.1", port)
    bus = await Bus.start(fresh_nats.url, (STREAM,), wait_seconds=0.5, reconnect_wait=0.2)
    try:
        for _ in range(5):  # what a consumer's and a relay's rounds do meanwhile
            with pytest.raises(NoServersError):
                await bus.ensure_stream(STREAM)
            with pytest.raises(NoServersError):
                await bus.publish("late.test.meanwhile", b"x", msg_id="meanwhile")
            await asyncio.sleep(0.1)
        dropper.close()
        await dropper.wait_closed()
        await asyncio.to_thread(fresh_nats.start)
        await timeouts.within(20, bus.wait_ready())
        ack = await timeouts.within(10, bus.publish("late.test.after", b"after", msg_id="after"))
        assert ack.stream == STREAM.name
        acked = await timeouts.within(
            10, await bus.jetstream.publish_async("late.test.async", b"async", headers={"Nats-Msg-Id": "a"})
        )
        assert acked.stream == STREAM.name
    finally:
        await bus.close()


async def test_a_url_nats_cannot_parse_still_fails_the_start() -> None:
    """Only an outage is waited out: a URL that can never work fails the start at once, as before."""
    with pytest.raises(NatsError, match="invalid"):
        await timeouts.within(10, Bus.start(f"nats://127.0.0.1:{free_port()}x", wait_seconds=5))


async def test_the_start_waits_for_a_nats_that_comes_within_its_bound(fresh_nats: EmbeddedNats) -> None:
    """The usual start (NATS up or coming within the wait) is as before: connected and streams declared
    before the service registers and serves."""
    await asyncio.to_thread(fresh_nats.stop)
    starting = asyncio.create_task(Bus.start(fresh_nats.url, (STREAM,), wait_seconds=30, reconnect_wait=0.1))
    await asyncio.sleep(0.5)
    assert not starting.done()
    await asyncio.to_thread(fresh_nats.start)
    bus = await timeouts.within(30, starting)
    try:
        assert bus.ready and bus.client.is_connected
        assert (await bus.jetstream.stream_info(STREAM.name)).config.name == STREAM.name
    finally:
        await bus.close()
