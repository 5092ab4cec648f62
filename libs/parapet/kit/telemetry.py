"""OpenTelemetry tracing: one TracerProvider per process, W3C trace context across every gRPC hop.

Server and client interceptors come from ``opentelemetry-instrumentation-grpc``; they extract and inject
``traceparent`` metadata, so a request keeps one trace id from the gateway through every service. Spans
are exported over OTLP when an endpoint is configured; without one they are still created, because log
lines carry their trace ids.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.instrumentation.grpc import filters as grpc_filters
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

log = logging.getLogger(__name__)

# Health probes every second from kubelets and monitors would bury the traces that matter.
_NOT_TRACED = grpc_filters.negate(
    grpc_filters.any_of(grpc_filters.health_check(), grpc_filters.service_prefix("grpc.reflection."))
)


def create_tracer_provider(service_name: str, otlp_endpoint: str | None = None) -> TracerProvider:
    """A provider whose spans name ``service_name``, exporting to ``otlp_endpoint`` when given."""
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    return provider


def setup_tracing(service_name: str, otlp_endpoint: str | None = None) -> TracerProvider:
    """Install the process-wide provider (once per process, as OpenTelemetry allows) and return it."""
    provider = create_tracer_provider(service_name, otlp_endpoint)
    trace.set_tracer_provider(provider)
    return provider


def current_provider() -> Any:
    return trace.get_tracer_provider()


def server_interceptor(tracer_provider: Any = None) -> Any:
    """The grpc.aio server interceptor that continues the caller's trace (outermost of all)."""
    return aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=tracer_provider or current_provider(), filter_=_NOT_TRACED
    )


def client_interceptors(tracer_provider: Any = None) -> list[Any]:
    """The grpc.aio client interceptors that start a client span and inject ``traceparent``."""
    interceptors = aio_client_interceptors(  # type: ignore[no-untyped-call]
        tracer_provider=tracer_provider or current_provider(), filter_=_NOT_TRACED
    )
    return list(interceptors)


def current_trace_id() -> str | None:
    """The current trace id as 32 hex digits, or None outside a trace."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None
