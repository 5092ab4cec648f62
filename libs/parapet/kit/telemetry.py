"""OpenTelemetry tracing: one TracerProvider per process, W3C trace context across every gRPC hop.

Spans are recorded only when they are exported: ``setup_tracing`` installs the SDK's provider when an
OTLP endpoint is configured and leaves OpenTelemetry's no-op default otherwise. Either way a request keeps
one trace id from the gateway through every service (``parapet.kit.rpc_tracing`` continues the caller's
``traceparent``, or starts a trace id at the first hop, for log lines and audit records).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from parapet.kit.rpc_tracing import NOT_TRACED_PREFIXES

log = logging.getLogger(__name__)


def _traced(call_details: Any) -> bool:
    """Health and reflection calls get no span (probes every second would bury the traces that matter).

    A plain prefix test: the library's own filters check ``isinstance`` against a runtime Protocol,
    which measured a third of a traced call's interceptor cost."""
    method = call_details.method
    if isinstance(method, bytes):
        method = method.decode()
    return not str(method).startswith(NOT_TRACED_PREFIXES)


def create_tracer_provider(service_name: str, otlp_endpoint: str | None = None) -> TracerProvider:
    """A provider whose spans name ``service_name``, exporting to ``otlp_endpoint`` when given."""
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    return provider


def setup_tracing(service_name: str, otlp_endpoint: str | None = None) -> TracerProvider | None:
    """With an OTLP endpoint, install the process-wide recording provider (once per process, as
    OpenTelemetry allows) and return it; without one, None: spans nobody exports are not created."""
    if not otlp_endpoint:
        return None
    provider = create_tracer_provider(service_name, otlp_endpoint)
    trace.set_tracer_provider(provider)
    return provider


def current_provider() -> Any:
    return trace.get_tracer_provider()


def client_interceptors(tracer_provider: Any = None) -> list[Any]:
    """OpenTelemetry's grpc.aio client interceptors: a CLIENT span per call, ``traceparent`` injected.

    Used by kit channels when spans are recorded (they cover gRPC's own retries and end with the call's
    status); without a recording provider the channel passes the trace context on itself, cheaper."""
    interceptors = aio_client_interceptors(  # type: ignore[no-untyped-call]
        tracer_provider=tracer_provider or current_provider(), filter_=_traced
    )
    return list(interceptors)


def current_trace_id() -> str | None:
    """The current trace id as 32 hex digits, or None outside a trace."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


# --- OpenTelemetry GenAI semantic conventions (gen_ai.*), for spans of model calls ---
# https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/ : span name "{operation} {model}", kind
# CLIENT. Both the older `gen_ai.system` and its successor `gen_ai.provider.name` are set, so backends of
# either convention version group the calls by provider.
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_SYSTEM = "gen_ai.system"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"


def gen_ai_request_attributes(
    *,
    operation: str,
    provider: str,
    request_model: str,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
) -> dict[str, str | int | float]:
    """Attributes of a model request (``operation``: ``chat``, ``text_completion``, ``embeddings``)."""
    attributes: dict[str, str | int | float] = {
        GEN_AI_OPERATION_NAME: operation,
        GEN_AI_SYSTEM: provider,
        GEN_AI_PROVIDER_NAME: provider,
        GEN_AI_REQUEST_MODEL: request_model,
    }
    for key, value in (
        (GEN_AI_REQUEST_MAX_TOKENS, max_tokens),
        (GEN_AI_REQUEST_TEMPERATURE, temperature),
        (GEN_AI_REQUEST_TOP_P, top_p),
    ):
        if value is not None:
            attributes[key] = value
    return attributes


def set_gen_ai_response(
    span: trace.Span,
    *,
    response_model: str | None = None,
    response_id: str | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    finish_reasons: Sequence[str] = (),
) -> None:
    """Record what the model answered on its span (only the facts that are known)."""
    for key, value in (
        (GEN_AI_RESPONSE_MODEL, response_model),
        (GEN_AI_RESPONSE_ID, response_id),
        (GEN_AI_USAGE_INPUT_TOKENS, input_tokens),
        (GEN_AI_USAGE_OUTPUT_TOKENS, output_tokens),
    ):
        if value is not None:
            span.set_attribute(key, value)
    if finish_reasons:
        span.set_attribute(GEN_AI_RESPONSE_FINISH_REASONS, list(finish_reasons))


def genai_tracer(tracer_provider: Any = None) -> trace.Tracer:
    """The tracer of model-call spans; a caller making many keeps it (the SDK builds a new one per call, ~7 µs)."""
    tracer: trace.Tracer = (tracer_provider or current_provider()).get_tracer("parapet.genai")
    return tracer


def start_model_call(
    operation: str, provider: str, request_model: str, *, tracer: trace.Tracer | None = None, **request: Any
) -> trace.Span:
    """A CLIENT span ``"{operation} {request_model}"`` with the GenAI request attributes, a child of the current
    span but not made current; the caller ends it. For a model call inside an async generator, where a context
    attached at one ``yield`` may have to be detached from another context (the generator closed elsewhere)."""
    tracer = tracer or genai_tracer()
    attributes = gen_ai_request_attributes(
        operation=operation, provider=provider, request_model=request_model, **request
    )
    span: trace.Span = tracer.start_span(
        f"{operation} {request_model}", kind=trace.SpanKind.CLIENT, attributes=attributes
    )
    return span


@contextmanager
def model_call_span(
    operation: str, provider: str, request_model: str, *, tracer_provider: Any = None, **request: Any
) -> Iterator[trace.Span]:
    """:func:`start_model_call`'s span, current inside the block and ended after it."""
    span = start_model_call(
        operation, provider, request_model, tracer=genai_tracer(tracer_provider), **request
    )
    with trace.use_span(span, end_on_exit=True):
        yield span
