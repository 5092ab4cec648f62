"""End to end over real servers: a gateway-shaped kit service makes a model call (GenAI span) and records
the interaction at the real audit service; every hop is a span of one trace, the audit record carries that
trace id, and the audit service's /metrics, scraped over HTTP, has the RPC and audit series."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import grpc.aio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from parapet.audit.v1 import audit_record_pb2, audit_service_pb2, audit_service_pb2_grpc, interaction_pb2
from parapet.embedded import EmbeddedNats
from parapet.kit import clients, telemetry
from parapet.kit.identity import Principal
from parapet.kit.testing import (
    StringValue,
    fast_settings,
    generic_app,
    make_test_keys,
    running,
    string_service,
    unary_caller,
)
from services.audit.app import APP as AUDIT_APP
from tests.integration.audit.conftest import audit_settings, new_tenant
from tests.integration.observability.scrape import scrape

GATEWAY = "test.gateway.v1.Chat"


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_one_trace_across_every_hop_and_metrics_over_http(
    database_url: str, fresh_nats: EmbeddedNats, tmp_path: Path
) -> None:
    # A NATS of its own: on the session's, the AUDIT work queue may hold records other tests left, which the
    # consumer would work through before reaching this test's one.
    nats_url = fresh_nats.url
    keys = make_test_keys()
    tenant = new_tenant()
    keys.principal = Principal(tenant_id=tenant, subject="alice", roles=("admin",))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = audit_settings(database_url, nats_url, tmp_path, keys, metrics_port=0)

    async with running(AUDIT_APP, settings, tracer_provider=provider) as (audit_server, audit_port):
        audit_channel = clients.channel(f"127.0.0.1:{audit_port}", tracer_provider=provider)
        audit_stub = audit_service_pb2_grpc.AuditServiceStub(audit_channel)

        async def chat(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
            with telemetry.model_call_span(
                "chat", "local", "gpt-test", tracer_provider=provider, max_tokens=64
            ) as span:
                answer = f"echo: {request.value}"
                telemetry.set_gen_ai_response(
                    span, response_model="gpt-test", input_tokens=3, output_tokens=2, finish_reasons=["stop"]
                )
            record = audit_record_pb2.AuditRecord(
                record_id=str(uuid.uuid4()),
                interaction=interaction_pb2.Interaction(
                    request_id="req-trace",
                    trace_id=telemetry.current_trace_id() or "",
                    user_id="alice",
                    model="gpt-test",
                    body=interaction_pb2.InteractionBody(prompt=request.value, response=answer),
                ),
            )
            record.create_time.GetCurrentTime()
            # Identity and trace context travel with the kit channel: no token handling here.
            await audit_stub.Record(audit_service_pb2.RecordRequest(record=record))
            return StringValue(value=answer)

        gateway = generic_app(
            string_service(GATEWAY, unary={"Chat": chat}), keys=keys, service_names=(GATEWAY,), name="gw"
        )
        async with running(gateway, fast_settings(), tracer_provider=provider) as (_, gateway_port):
            root_tracer = provider.get_tracer("test")
            with root_tracer.start_as_current_span("caller") as root:
                channel = clients.channel(f"127.0.0.1:{gateway_port}", tracer_provider=provider)
                try:
                    answer = await unary_caller(channel, f"/{GATEWAY}/Chat")(
                        StringValue(value="hi"), metadata=keys.metadata(), timeout=10
                    )
                finally:
                    await channel.close()
            assert answer.value == "echo: hi"

            records = [
                r
                async for batch in audit_stub.QueryInteractions(
                    audit_service_pb2.QueryInteractionsRequest(), metadata=keys.metadata(), timeout=10
                )
                for r in batch.records
            ]
        await audit_channel.close()

        trace_id = format(root.get_span_context().trace_id, "032x")
        assert [r.interaction.trace_id for r in records] == [trace_id]

        spans = [s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]
        by_name = {(s.name, s.kind): s for s in spans}
        gateway_server = by_name[(f"/{GATEWAY}/Chat", SpanKind.SERVER)]
        model = by_name[("chat gpt-test", SpanKind.CLIENT)]
        record_client = by_name[("/parapet.audit.v1.AuditService/Record", SpanKind.CLIENT)]
        record_server = by_name[("/parapet.audit.v1.AuditService/Record", SpanKind.SERVER)]
        # Each hop hangs under the one before it.
        assert _parent(by_name[(f"/{GATEWAY}/Chat", SpanKind.CLIENT)]) == root.get_span_context().span_id
        assert _parent(model) == gateway_server.context.span_id
        assert _parent(record_client) == gateway_server.context.span_id
        assert _parent(record_server) == record_client.context.span_id
        attributes = dict(model.attributes or {})
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.request.model"] == "gpt-test"
        assert attributes["gen_ai.provider.name"] == "local"
        assert attributes["gen_ai.usage.output_tokens"] == 2
        assert tuple(attributes["gen_ai.response.finish_reasons"]) == ("stop",)  # type: ignore[arg-type]

        samples = await scrape(audit_server.metrics_port)
        record_ok = (
            "parapet_rpc_server_duration_seconds_count",
            (
                ("grpc_code", "OK"),
                ("grpc_method", "Record"),
                ("grpc_service", "parapet.audit.v1.AuditService"),
            ),
        )
        assert samples[record_ok] >= 1
        assert samples[("parapet_audit_records_total", (("outcome", "appended"), ("source", "rpc")))] >= 1
        assert "parapet_rpc_server_duration_seconds_bucket" in samples.names()
