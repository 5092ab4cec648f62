"""Structured logs: one JSON line per RPC carrying method, code, tenant, request id and trace id."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest
from opentelemetry.sdk.trace import TracerProvider

from parapet.kit.context import CLIENT_ADDRESS_KEY, RpcInfo, current_rpc
from parapet.kit.errors import NotFound
from parapet.kit.logging import OncePer, configure_logging
from parapet.kit.testing import (
    StringValue,
    TestKeys,
    fast_settings,
    generic_app,
    running,
    stream_caller,
    string_service,
    unary_caller,
)

SERVICE = "test.v1.Logged"


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("INFO", "json", service="logged", stream=stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)


async def handle(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
    logging.getLogger("test.handler").info("inside", extra={"step": "handler"})
    if request.value == "missing":
        raise NotFound("no such thing", reason="THING_NOT_FOUND")
    return StringValue(value="ok")


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def test_rpc_lines_carry_context(log_stream: io.StringIO, keys: TestKeys) -> None:
    app = generic_app(string_service(SERVICE, unary={"Do": handle}), keys=keys, service_names=(SERVICE,))
    async with (
        running(app, fast_settings(), tracer_provider=TracerProvider()) as (_, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        call = unary_caller(channel, f"/{SERVICE}/Do")
        await call(StringValue(value="x"), metadata=(*keys.metadata(), ("x-request-id", "req-1")))
        with pytest.raises(grpc.aio.AioRpcError):
            await call(StringValue(value="missing"), metadata=keys.metadata())

    records = lines(log_stream)
    inside = next(r for r in records if r["event"] == "inside")
    rpcs = [r for r in records if r["event"] == "rpc"]
    assert len(rpcs) == 2
    ok, failed = rpcs
    assert ok["method"] == f"/{SERVICE}/Do" and ok["code"] == "OK" and ok["tenant"] == "tenant-a"
    assert ok["request_id"] == "req-1" and ok["service"] == "logged" and ok["duration_ms"] >= 0
    assert len(ok["trace_id"]) == 32 and ok["peer"]
    # A line logged inside the handler shares the RPC's request id and trace id.
    assert (inside["request_id"], inside["trace_id"], inside["step"]) == ("req-1", ok["trace_id"], "handler")
    assert (failed["code"], failed["reason"]) == ("NOT_FOUND", "THING_NOT_FOUND")
    assert failed["request_id"] != "req-1" and len(failed["request_id"]) == 32  # a fresh one


async def test_edge_callers_cannot_choose_the_request_id(keys: TestKeys) -> None:
    """Services key idempotency on the request id: only callers inside the suite may pass theirs on."""
    from parapet.kit.context import current_request_id

    async def echo_request_id(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
        return StringValue(value=current_request_id() or "")

    handler = string_service(SERVICE, unary={"Edge": echo_request_id, "Inner": echo_request_id})
    app = generic_app(
        handler, keys=keys, service_names=(SERVICE,), public_methods=frozenset({f"/{SERVICE}/Edge"})
    )
    chosen = (("x-request-id", "replayed-id-1"),)
    async with running(app, fast_settings()) as (_, port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            edge = await unary_caller(channel, f"/{SERVICE}/Edge")(StringValue(), metadata=chosen)
            inner = await unary_caller(channel, f"/{SERVICE}/Inner")(
                StringValue(), metadata=chosen + keys.metadata()
            )
    assert edge.value and edge.value != "replayed-id-1"
    assert inner.value == "replayed-id-1"


def test_the_client_address_is_the_forwarded_one_else_the_peer_address() -> None:
    info = RpcInfo("/x.v1.S/M", "r1", peer="ipv4:127.0.0.1:5555")
    assert info.client_address() == "127.0.0.1"
    assert RpcInfo("/x.v1.S/M", "r1", peer="ipv6:[::1]:5555").client_address() == "::1"
    assert RpcInfo("/x.v1.S/M", "r1", peer="unix:/run/s.sock").client_address() == "/run/s.sock"
    info.forwarded_client = "203.0.113.7"
    assert info.client_address() == "203.0.113.7"
    assert RpcInfo("/x.v1.S/M", "r1").client_address() == "unknown"


async def test_handlers_of_both_kinds_see_the_rpc_and_its_client_address(keys: TestKeys) -> None:
    async def address(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
        info = current_rpc()
        assert info is not None
        return StringValue(value=info.client_address())

    async def addresses(
        request: StringValue, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[StringValue]:
        for _ in range(2):
            yield await address(request, context)

    service = string_service(SERVICE, unary={"Who": address}, server_streaming={"Whos": addresses})
    app = generic_app(service, keys=keys, service_names=(SERVICE,))
    async with (
        running(app, fast_settings()) as (_, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        unary = unary_caller(channel, f"/{SERVICE}/Who")
        streaming = stream_caller(channel, f"/{SERVICE}/Whos")
        forwarded = (*keys.metadata(), (CLIENT_ADDRESS_KEY, "203.0.113.7"))
        oversized = (*keys.metadata(), (CLIENT_ADDRESS_KEY, "x" * 65))
        assert (await unary(StringValue(), metadata=forwarded)).value == "203.0.113.7"
        assert [m.value async for m in streaming(StringValue(), metadata=forwarded)] == ["203.0.113.7"] * 2
        # No header, or one over 64 characters: the peer without its port.
        assert (await unary(StringValue(), metadata=keys.metadata())).value == "127.0.0.1"
        assert (await unary(StringValue(), metadata=oversized)).value == "127.0.0.1"
    assert current_rpc() is None  # the test's own context never saw an RPC's


def test_once_per_lets_a_line_through_once_per_interval_and_key_and_stays_bounded() -> None:
    once = OncePer(3600.0, max_keys=2)
    assert once.due("a") and not once.due("a")  # within the interval: held back
    assert once.due("b") and not once.due("b")  # each key on its own
    assert once.due("c")  # a third key: the two remembered are forgotten (bounded memory)...
    assert once.due("a")  # ...so the first one's next line is due again
    every_time = OncePer(0.0)
    assert every_time.due() and every_time.due()
