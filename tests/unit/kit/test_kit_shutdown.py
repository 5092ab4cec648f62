"""Graceful shutdown: in-flight streams finish within the grace, new calls are refused, health drains."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from parapet.kit.server import create_server
from parapet.kit.testing import (
    StringValue,
    TestKeys,
    fast_settings,
    generic_app,
    stream_caller,
    string_service,
    unary_caller,
)

SERVICE = "test.v1.Slow"
STREAM = f"/{SERVICE}/Stream"
PING = f"/{SERVICE}/Ping"


async def slow_stream(request: StringValue, context: grpc.aio.ServicerContext) -> AsyncIterator[StringValue]:
    for index in range(int(request.value)):
        await asyncio.sleep(0.1)
        yield StringValue(value=str(index))


async def ping(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
    return StringValue(value="pong")


def slow_app(keys: TestKeys):  # type: ignore[no-untyped-def]
    handler = string_service(SERVICE, unary={"Ping": ping}, server_streaming={"Stream": slow_stream})
    return generic_app(handler, keys=keys, service_names=(SERVICE,))


async def read_all(call: grpc.aio.UnaryStreamCall) -> list[str]:
    messages = []
    while (message := await call.read()) is not grpc.aio.EOF:
        messages.append(message.value)
    return messages


async def test_stream_in_flight_completes_during_graceful_shutdown(keys: TestKeys) -> None:
    server, port = await create_server(slow_app(keys), fast_settings())
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = stream_caller(channel, STREAM)(StringValue(value="8"), metadata=keys.metadata())
        first = await call.read()
        assert first.value == "0"

        started = time.monotonic()
        stopping = asyncio.create_task(server.stop(grace=5))
        await asyncio.sleep(0.05)
        assert not server.health.serving  # load balancers are told first

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await unary_caller(channel, PING)(StringValue(), metadata=keys.metadata(), timeout=2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        assert await read_all(call) == [str(index) for index in range(1, 8)]
        assert await call.code() == grpc.StatusCode.OK
        await stopping
        # The drain ended when the stream did, not at the end of the grace period.
        assert time.monotonic() - started < 3


async def test_stream_longer_than_grace_is_cut_at_grace(keys: TestKeys) -> None:
    server, port = await create_server(slow_app(keys), fast_settings())
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = stream_caller(channel, STREAM)(StringValue(value="100"), metadata=keys.metadata())
        await call.read()
        started = time.monotonic()
        await server.stop(grace=0.5)
        elapsed = time.monotonic() - started
        with pytest.raises(grpc.aio.AioRpcError):
            await read_all(call)
        assert 0.4 < elapsed < 2.5


async def test_health_watch_ends_with_not_serving_on_drain(keys: TestKeys) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server, port = await create_server(slow_app(keys), fast_settings())
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        started = time.monotonic()
        await server.stop(grace=5)
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        # The watch stream ended by itself, so it did not hold the drain for the whole grace period.
        assert time.monotonic() - started < 2
        assert await watch.code() == grpc.StatusCode.OK
