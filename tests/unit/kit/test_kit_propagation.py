"""Two hops through the kit client: deadline, identity, request id and trace context cross them."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import grpc.aio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from parapet.kit import clients, rpc_tracing, telemetry
from parapet.kit.context import current_principal, current_request_id, remaining_time
from parapet.kit.testing import (
    StringValue,
    TestKeys,
    fast_settings,
    generic_app,
    health_status,
    running,
    string_service,
    unary_caller,
)

B_SERVICE, A_SERVICE = "test.v1.B", "test.v1.A"


async def b_observe(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
    principal = current_principal()
    return StringValue(
        value=json.dumps(
            {
                "remaining": remaining_time(),
                "tenant": principal.tenant_id if principal else None,
                "request_id": current_request_id(),
                "trace_id": telemetry.current_trace_id(),
            }
        )
    )


@dataclass
class Hops:
    a_port: int
    provider: TracerProvider
    exporter: InMemorySpanExporter


@pytest.fixture
async def hops(keys: TestKeys) -> AsyncIterator[Hops]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    b_app = generic_app(
        string_service(B_SERVICE, unary={"Observe": b_observe}), keys=keys, service_names=(B_SERVICE,)
    )
    async with running(b_app, fast_settings(), tracer_provider=provider) as (_, b_port):
        b_channel = clients.channel(f"127.0.0.1:{b_port}", tracer_provider=provider)

        async def a_forward(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
            timeout = float(request.value) if request.value else None
            a_remaining = remaining_time()
            answer = await unary_caller(b_channel, f"/{B_SERVICE}/Observe")(StringValue(), timeout=timeout)
            observed = json.loads(answer.value)
            observed["a_remaining"] = a_remaining
            observed["a_trace_id"] = telemetry.current_trace_id()
            return StringValue(value=json.dumps(observed))

        a_app = generic_app(
            string_service(A_SERVICE, unary={"Forward": a_forward}),
            keys=keys,
            service_names=(A_SERVICE,),
            name="a",
        )
        async with running(a_app, fast_settings(), tracer_provider=provider) as (_, a_port):
            yield Hops(a_port, provider, exporter)
        await b_channel.close()


async def call_a(
    hops: Hops, keys: TestKeys, *, a_timeout: float | None, b_timeout: str = ""
) -> dict[str, object]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hops.a_port}") as channel:
        metadata = (*keys.metadata(), ("x-request-id", "req-42"))
        answer = await unary_caller(channel, f"/{A_SERVICE}/Forward")(
            StringValue(value=b_timeout), metadata=metadata, timeout=a_timeout
        )
    result: dict[str, object] = json.loads(answer.value)
    return result


async def test_b_sees_at_most_the_time_a_had_left(hops: Hops, keys: TestKeys) -> None:
    observed = await call_a(hops, keys, a_timeout=2.0)
    a_remaining, b_remaining = observed["a_remaining"], observed["remaining"]
    assert isinstance(a_remaining, float) and isinstance(b_remaining, float)
    # B gets A's remainder minus the kit's margin; the wire encoding of grpc-timeout may round it up
    # by a fraction of a millisecond, hence the tolerance on the margin (not on the remainder).
    assert 0 < b_remaining < a_remaining - clients.DEADLINE_MARGIN_SECONDS / 2
    # The same wire rounding applies to the caller's own 2 s (seen: 2.0078 s at A).
    assert a_remaining <= 2.0 + 0.01


async def test_explicit_shorter_timeout_wins(hops: Hops, keys: TestKeys) -> None:
    observed = await call_a(hops, keys, a_timeout=2.0, b_timeout="0.5")
    # grpc-timeout's wire encoding may round the 0.5 s up by a fraction of a millisecond (seen: 0.500008 s).
    assert isinstance(observed["remaining"], float) and 0 < observed["remaining"] <= 0.5 + 0.01


async def test_without_incoming_deadline_the_default_timeout_applies(hops: Hops, keys: TestKeys) -> None:
    observed = await call_a(hops, keys, a_timeout=None)
    assert observed["a_remaining"] is None
    remaining = observed["remaining"]
    # gRPC core rounds long timeouts up on the wire (to 100 ms steps at this size).
    assert isinstance(remaining, float) and 25 < remaining <= clients.DEFAULT_TIMEOUT_SECONDS + 0.2


async def test_identity_and_request_id_are_forwarded(hops: Hops, keys: TestKeys) -> None:
    observed = await call_a(hops, keys, a_timeout=2.0)
    assert observed["tenant"] == keys.principal.tenant_id
    assert observed["request_id"] == "req-42"


async def test_one_trace_id_across_two_hops(hops: Hops, keys: TestKeys) -> None:
    tracer = hops.provider.get_tracer("test")
    with tracer.start_as_current_span("caller") as root:
        channel = clients.channel(f"127.0.0.1:{hops.a_port}", tracer_provider=hops.provider)
        try:
            answer = await unary_caller(channel, f"/{A_SERVICE}/Forward")(
                StringValue(), metadata=keys.metadata()
            )
        finally:
            await channel.close()
    trace_id = format(root.get_span_context().trace_id, "032x")
    observed = json.loads(answer.value)
    assert observed["a_trace_id"] == observed["trace_id"] == trace_id
    spans = hops.exporter.get_finished_spans()
    kinds = sorted((span.name.strip("/"), span.kind.name) for span in spans)
    # caller -> client span -> A's server span -> A's client span -> B's server span
    assert kinds == [
        ("caller", "INTERNAL"),
        (f"{A_SERVICE}/Forward", "CLIENT"),
        (f"{A_SERVICE}/Forward", "SERVER"),
        (f"{B_SERVICE}/Observe", "CLIENT"),
        (f"{B_SERVICE}/Observe", "SERVER"),
    ], kinds
    assert {format(span.context.trace_id, "032x") for span in spans} == {trace_id}


async def test_without_a_recording_provider_the_trace_context_still_crosses_every_hop(keys: TestKeys) -> None:
    """The default no-op provider: no spans are made, but the caller's traceparent reaches the last hop
    unchanged, and a call that brings none gets a fresh trace id shared by its onward calls."""
    b_app = generic_app(
        string_service(B_SERVICE, unary={"Observe": b_observe}), keys=keys, service_names=(B_SERVICE,)
    )
    async with running(b_app, fast_settings()) as (_, b_port):
        b_channel = clients.channel(f"127.0.0.1:{b_port}")

        async def a_forward(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
            answer = await unary_caller(b_channel, f"/{B_SERVICE}/Observe")(StringValue())
            observed = json.loads(answer.value)
            observed["a_trace_id"] = telemetry.current_trace_id()
            return StringValue(value=json.dumps(observed))

        a_app = generic_app(
            string_service(A_SERVICE, unary={"Forward": a_forward}), keys=keys, service_names=(A_SERVICE,)
        )
        async with (
            running(a_app, fast_settings()) as (_, a_port),
            grpc.aio.insecure_channel(f"127.0.0.1:{a_port}") as channel,
        ):
            forward = unary_caller(channel, f"/{A_SERVICE}/Forward")
            caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
            traceparent = ("traceparent", f"00-{caller_trace}-00f067aa0ba902b7-01")
            continued = json.loads(
                (await forward(StringValue(), metadata=(*keys.metadata(), traceparent))).value
            )
            fresh = [
                json.loads((await forward(StringValue(), metadata=keys.metadata())).value) for _ in range(2)
            ]
            garbled = ("traceparent", f"00-{caller_trace.upper()}-00f067aa0ba902b7-01")
            invalid = json.loads((await forward(StringValue(), metadata=(*keys.metadata(), garbled))).value)
        await b_channel.close()
    assert continued["a_trace_id"] == continued["trace_id"] == caller_trace
    for observed in (*fresh, invalid):
        assert observed["a_trace_id"] == observed["trace_id"] and len(observed["trace_id"]) == 32
        assert observed["trace_id"] != caller_trace
    assert fresh[0]["trace_id"] != fresh[1]["trace_id"]


@pytest.mark.parametrize(
    ("traceparent", "valid"),
    [
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", True),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-later-fields", True),  # a future version
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", False),  # version 00 has 4 fields
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),  # forbidden version
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False),  # zero trace id
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", False),  # zero span id
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", False),  # upper case
        ("00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01", False),  # short trace id
        ("", False),
    ],
)
def test_traceparent_parsing(traceparent: str, valid: bool) -> None:
    parsed = rpc_tracing.parse_traceparent(traceparent, "vendor=value")
    assert (parsed is not None) == valid
    if parsed is not None:
        assert parsed.is_remote and parsed.trace_state.get("vendor") == "value"
        assert rpc_tracing.trace_headers(parsed) == [
            ("traceparent", f"00-{traceparent[3:52]}-{traceparent[53:55]}"),
            ("tracestate", "vendor=value"),
        ]


async def test_recorded_server_spans_carry_the_status_the_caller_got(keys: TestKeys) -> None:
    from opentelemetry.trace import StatusCode

    from parapet.kit.errors import NotFound

    async def outcome(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
        if request.value == "missing":
            raise NotFound("no such thing", reason="THING_NOT_FOUND")
        if request.value == "bug":
            raise RuntimeError("secret detail")
        return request

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = generic_app(string_service(B_SERVICE, unary={"Do": outcome}), keys=keys, service_names=(B_SERVICE,))
    async with (
        running(app, fast_settings(), tracer_provider=provider) as (_, port),
        clients.channel(f"127.0.0.1:{port}", tracer_provider=provider) as channel,
    ):
        call = unary_caller(channel, f"/{B_SERVICE}/Do")
        await call(StringValue(value="ok"), metadata=keys.metadata())
        for value in ("missing", "bug"):
            with pytest.raises(grpc.aio.AioRpcError):
                await call(StringValue(value=value), metadata=keys.metadata())
        await health_status(channel)  # probes are traced on neither side
    spans = exporter.get_finished_spans()
    assert sorted(span.kind.name for span in spans) == ["CLIENT"] * 3 + ["SERVER"] * 3
    ok, missing, bug = (span for span in spans if span.kind.name == "SERVER")
    assert {span.name for span in (ok, missing, bug)} == {f"/{B_SERVICE}/Do"}
    assert [dict(span.attributes or {})["rpc.grpc.status_code"] for span in (ok, missing, bug)] == [0, 5, 13]
    assert dict(ok.attributes or {})["rpc.service"] == B_SERVICE and dict(ok.attributes or {})["net.peer.ip"]
    # NOT_FOUND is the caller's error, not the server's; INTERNAL is, and its exception is an event.
    assert [span.status.status_code for span in (ok, missing, bug)] == [
        StatusCode.UNSET,
        StatusCode.UNSET,
        StatusCode.ERROR,
    ]
    assert [event.name for event in bug.events] == ["exception"]


@pytest.mark.parametrize("recording", [False, True])
async def test_a_malformed_tracestate_is_dropped_without_logging_it(
    keys: TestKeys, recording: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Any caller (the gateway's are outside the suite) chooses its tracestate: one that is not W3C's format is
    dropped, as OpenTelemetry drops it, but without OpenTelemetry's WARNING quoting it, once per call, up to
    the metadata limit (a caller wrote what it liked into the service's warnings). A valid one goes on."""
    provider = TracerProvider() if recording else None
    b_app = generic_app(
        string_service(B_SERVICE, unary={"Observe": b_observe}), keys=keys, service_names=(B_SERVICE,)
    )
    seen: list[str] = []

    async with running(b_app, fast_settings(), tracer_provider=provider) as (_, b_port):
        b_channel = clients.channel(f"127.0.0.1:{b_port}", tracer_provider=provider)

        async def a_forward(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
            seen.append(telemetry.current_trace_id() or "")
            span_context = trace.get_current_span().get_span_context()
            seen.append(span_context.trace_state.to_header())
            await unary_caller(b_channel, f"/{B_SERVICE}/Observe")(StringValue())
            return StringValue()

        a_app = generic_app(
            string_service(A_SERVICE, unary={"Forward": a_forward}), keys=keys, service_names=(A_SERVICE,)
        )
        async with (
            running(a_app, fast_settings(), tracer_provider=provider) as (_, a_port),
            grpc.aio.insecure_channel(f"127.0.0.1:{a_port}") as channel,
        ):
            forward = unary_caller(channel, f"/{A_SERVICE}/Forward")
            caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
            traceparent = ("traceparent", f"00-{caller_trace}-00f067aa0ba902b7-01")
            caplog.clear()
            for tracestate in ("INJECTED log text " * 200, "a=1,a=2", ",".join(f"k{i}=v" for i in range(33))):
                await forward(
                    StringValue(), metadata=(*keys.metadata(), traceparent, ("tracestate", tracestate))
                )
            await forward(
                StringValue(), metadata=(*keys.metadata(), traceparent, ("tracestate", "ven@dor=v 1, k=2"))
            )
        await b_channel.close()
    assert [r.getMessage()[:80] for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert seen == [caller_trace, ""] * 3 + [caller_trace, "ven@dor=v 1,k=2"]
