"""Health follows real dependency state: NOT_SERVING while PostgreSQL is down, SERVING when back. A NATS outage
shows in `parapet.dependencies` only: every service's calls do without NATS (outboxes), so it takes no replica out
of rotation."""

from __future__ import annotations

import asyncio
import time

import grpc.aio
from grpc_health.v1 import health_pb2

from parapet.embedded import EmbeddedNats, EmbeddedPostgres
from parapet.kit import timeouts
from parapet.kit.bus import StreamSpec
from parapet.kit.health import DEPENDENCIES
from parapet.kit.testing import fast_settings, generic_app, health_status, running

SERVICE = "test.v1.Deps"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def wait_for_status(channel: grpc.aio.Channel, expected: int, within: float) -> float:
    """Seconds until both the overall and the service's status are ``expected``; fails after ``within``."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await health_status(channel) == expected and await health_status(channel, SERVICE) == expected:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"health did not become {expected} within {within}s")


async def test_health_follows_the_database(fresh_postgres: EmbeddedPostgres) -> None:
    app = generic_app(name="healthdb", service_names=(SERVICE,), uses_database=True)
    async with (
        running(app, fast_settings(database_url=fresh_postgres.url)) as (server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        assert await health_status(channel) == SERVING  # probed before the first call was accepted
        await asyncio.to_thread(fresh_postgres.stop)
        await wait_for_status(channel, NOT_SERVING, within=3)  # fails after 3 s
        await asyncio.to_thread(fresh_postgres.start)
        await wait_for_status(channel, SERVING, within=10)
        # And the database really works again through the kit's pool (stale connections replaced).
        assert await server.resources.require_database().ping()


async def wait_for_dependencies(channel: grpc.aio.Channel, expected: int, within: float) -> None:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await health_status(channel, DEPENDENCIES) == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{DEPENDENCIES} did not become {expected} within {within}s")


async def test_a_nats_outage_shows_in_the_dependencies_and_keeps_the_service_serving(
    fresh_nats: EmbeddedNats, fresh_postgres: EmbeddedPostgres
) -> None:
    """Until 2026-12-06 a NATS outage made the service NOT_SERVING, and so every pod of the suite unready at once
    (each connects to NATS), though none of their calls needs it: the gateway refused every chat its outbox could
    have carried."""
    stream = StreamSpec(name="HEALTH_TEST", subjects=("health.test.>",))
    app = generic_app(
        name="healthnats", service_names=(SERVICE,), uses_nats=True, uses_database=True, streams=(stream,)
    )
    settings = fast_settings(nats_url=fresh_nats.url, database_url=fresh_postgres.url)
    async with (
        running(app, settings) as (server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        assert await health_status(channel) == SERVING
        await wait_for_dependencies(channel, SERVING, within=3)
        bus = server.resources.require_bus()
        assert (await bus.jetstream.stream_info("HEALTH_TEST")).config.subjects == ["health.test.>"]
        await asyncio.to_thread(fresh_nats.stop)
        await wait_for_dependencies(channel, NOT_SERVING, within=3)
        assert await health_status(channel) == SERVING and await health_status(channel, SERVICE) == SERVING
        await asyncio.to_thread(fresh_nats.start)
        await wait_for_dependencies(channel, SERVING, within=10)
        ack = await bus.publish("health.test.after", b"back", msg_id="m-1")
        assert ack.stream == "HEALTH_TEST"


async def test_health_goes_on_probing_after_a_probe_raised_a_cancellation_of_its_own(
    fresh_postgres: EmbeddedPostgres,
) -> None:
    """A probe that awaited something another task cancelled raises CancelledError: a failed probe. It ended the
    monitor's loop instead, and health stayed SERVING for good while the database went away."""
    app = generic_app(name="healthcancel", service_names=(SERVICE,), uses_database=True)
    calls = 0
    probed = asyncio.Event()

    async def upstream() -> bool:
        nonlocal calls
        calls += 1
        probed.set()
        if calls == 1:
            shared: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            shared.cancel()  # cancelled by its owner, not by the monitor
            return await shared
        return True

    async with (
        running(app, fast_settings(database_url=fresh_postgres.url)) as (server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        server.resources.add_health_check("upstream", upstream)
        await timeouts.within(5, probed.wait())
        await asyncio.sleep(1)  # five intervals
        await asyncio.to_thread(fresh_postgres.stop)
        await wait_for_status(channel, NOT_SERVING, within=3)  # fails after 3 s
        await asyncio.to_thread(fresh_postgres.start)
        await wait_for_status(channel, SERVING, within=10)
