"""Tracing of each RPC the kit serves or makes, at the cost the configured tracer provider warrants.

Two modes, chosen once per server or channel from its tracer provider:

- **recording** (an SDK ``TracerProvider``, which ``setup_tracing`` installs when spans are exported):
  a SERVER span per served RPC named by its full method, with the semantic conventions' ``rpc.*`` and
  ``net.peer.*`` attributes and the final status code, child of the caller's W3C ``traceparent``
  (extracted with the globally configured propagator, as ``opentelemetry-instrumentation-grpc`` does).
- **light** (the default no-op provider: nothing would record a span): no span is created at all. The
  caller's ``traceparent``/``tracestate`` is made the current span context unchanged, so log lines carry
  its trace id and outgoing calls pass it on; an RPC that arrives without one gets a fresh random trace
  id (not sampled), so the log lines and audit records of one request still share a trace id across
  services. Measured: the span machinery cost about a third of a kit call's CPU (docs/kit.md).

Health and reflection calls are never traced (a probe every second would bury the traces that matter).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from typing import Any

import grpc
import grpc.aio
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
NOT_TRACED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

# version-traceid-parentid-flags; versions after 00 may append fields (W3C Trace Context, level 1).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
# W3C tracestate: comma-separated key=value list-members (empty ones allowed), at most 32, keys unique. The
# same grammar (and length bound) OpenTelemetry's parser applies, checked here first because that parser logs a
# WARNING quoting each header it rejects: any caller could write what it liked into the services' warnings,
# once per call. A header that fails is dropped whole, as OpenTelemetry drops it, silently.
_TRACESTATE_KEY = r"[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13}"
_TRACESTATE_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_TRACESTATE_MEMBER = re.compile(f"({_TRACESTATE_KEY})=({_TRACESTATE_VALUE})")
_TRACESTATE_MAX_MEMBERS = 32
_TRACESTATE_MAX_LENGTH = 8192
# The codes the semantic conventions count as a server's own error; others (NOT_FOUND...) leave it unset.
_SERVER_ERROR_CODES = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
_CODE_NUMBERS = {code.name: code.value[0] for code in grpc.StatusCode}


def is_recording(tracer_provider: Any) -> bool:
    """Whether spans from ``tracer_provider`` are real (the SDK's provider) rather than no-ops."""
    return isinstance(tracer_provider, TracerProvider)


def parse_traceparent(traceparent: str, tracestate: str | None = None) -> SpanContext | None:
    """The remote span context in W3C headers, or None when ``traceparent`` is not a valid one."""
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if trace_id == 0 or span_id == 0:
        return None
    state = parse_tracestate(tracestate) if tracestate else None
    return SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(flags_hex, 16)), trace_state=state
    )


def parse_tracestate(tracestate: str) -> TraceState | None:
    """The list-members of a W3C ``tracestate`` header, or None when it is not a valid one (never logged)."""
    if len(tracestate) > _TRACESTATE_MAX_LENGTH:
        return None
    members: dict[str, str] = {}
    for member in tracestate.split(","):
        member = member.strip(" \t")
        if not member:
            continue
        match = _TRACESTATE_MEMBER.fullmatch(member)
        if match is None or match[1] in members or len(members) == _TRACESTATE_MAX_MEMBERS:
            return None
        members[match[1]] = match[2]
    return TraceState(list(members.items()))


def trace_headers(span_context: SpanContext) -> list[tuple[str, str]]:
    """``traceparent`` (and ``tracestate`` when set) carrying ``span_context`` to the next hop."""
    headers = [
        (
            TRACEPARENT,
            f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}",
        )
    ]
    if span_context.trace_state:
        headers.append((TRACESTATE, span_context.trace_state.to_header()))
    return headers


def current_trace_headers() -> list[tuple[str, str]]:
    """Trace headers for an outgoing call made in the current context (none outside a trace)."""
    span_context = trace.get_current_span().get_span_context()
    return trace_headers(span_context) if span_context.is_valid else []


def _fresh_span_context() -> SpanContext:
    # The SDK's RandomIdGenerator does the same; a zero id (probability 2**-128) would only mean no id.
    return SpanContext(random.getrandbits(128), random.getrandbits(64), is_remote=False)


class ServerTracing:
    """The tracing of served RPCs: light without a recording ``tracer_provider``, recording with one."""

    def __init__(self, tracer_provider: Any = None) -> None:
        self._tracer = (
            tracer_provider.get_tracer("parapet.kit.rpc") if is_recording(tracer_provider) else None
        )

    def start(
        self,
        method: str,
        metadata: Iterable[tuple[str, Any]],
        traceparent: str | None,
        tracestate: str | None,
    ) -> trace.Span | None:
        """Make the RPC's trace context current; returns its span when one is recorded."""
        if self._tracer is None:
            parent = parse_traceparent(traceparent, tracestate) if traceparent else None
            # Attached without detaching: grpc.aio serves each RPC in a task of its own, whose context dies
            # with it.
            otel_context.attach(trace.set_span_in_context(NonRecordingSpan(parent or _fresh_span_context())))
            return None
        carrier = {key: value for key, value in metadata if isinstance(value, str)}
        if TRACESTATE in carrier and parse_tracestate(carrier[TRACESTATE]) is None:
            del carrier[TRACESTATE]  # the propagator would drop it too, with a WARNING quoting it
        context = propagate.extract(carrier)
        service, _, name = method.lstrip("/").partition("/")
        attributes: dict[str, Any] = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        if "user-agent" in carrier:
            attributes["rpc.user_agent"] = carrier["user-agent"]
        span: trace.Span = self._tracer.start_span(
            method, context=context, kind=SpanKind.SERVER, attributes=attributes
        )
        otel_context.attach(trace.set_span_in_context(span, context))
        return span

    @staticmethod
    def finish(span: trace.Span, code: str, unexpected: BaseException | None, peer: str) -> None:
        """End a recorded span with the RPC's final status code (``unexpected``: an exception mapped to
        INTERNAL, recorded as an event)."""
        span.set_attribute("rpc.grpc.status_code", _CODE_NUMBERS.get(code, 2))
        _set_peer(span, peer)
        if unexpected is not None:
            span.record_exception(unexpected)
        if code in _SERVER_ERROR_CODES:
            span.set_status(Status(StatusCode.ERROR, f"StatusCode.{code}"))
        span.end()


def _set_peer(span: trace.Span, peer: str) -> None:
    """``ipv4:10.2.1.1:57284`` / ``ipv6:[::1]:57284`` -> net.peer.ip and net.peer.port."""
    kind, _, address = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return
    ip, _, port = address.rpartition(":")
    span.set_attribute("net.peer.ip", ip.strip("[]"))
    span.set_attribute("net.peer.port", port)
