"""Every Prometheus metric of the suite, defined once, with typed helpers; and the ``/metrics`` endpoint.

Services never create metrics of their own: they call the helpers below, so names, labels and buckets stay
consistent across services and the alert rules and dashboard in ``deploy/observability`` can rely on them
(a test checks that every metric the rules use is defined here). The RPC metrics are recorded by the kit's
metrics interceptor for every service; the rest by the service that knows the fact (see docs/observability.md
for who records what).

Label values are bounded: tenants, models, providers, categories and gRPC methods are finite sets; never
put a user id, request id or free text in a label.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from enum import IntEnum
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate_latest

from parapet.kit.timeouts import within

log = logging.getLogger(__name__)

# Seconds; from sub-millisecond RPCs to minute-long streams.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Model calls are slower: tens of milliseconds to minutes.
MODEL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
# The time Parapet adds to a chat: milliseconds. Its targets (p50 <= 2 ms, p99 <= 5 ms) are bucket bounds with
# narrow buckets around them, so the quantiles near a target are not interpolated across a wide bucket; the
# tail passes the gateway's downstream timeout (5 s by default: a dependency timing out before the flow degrades).
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.1, 0.5, 2.5, 10)

RPC_DURATION = Histogram(
    "parapet_rpc_server_duration_seconds",
    "Time to serve an RPC (a whole stream for streaming RPCs), by service, method and gRPC status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
    buckets=RPC_BUCKETS,
)
RPC_ERRORS = Counter(
    "parapet_rpc_server_errors_total",
    "RPCs that ended with a non-OK status, by method and error type "
    "(client_error, rate_limited = 429-like, server_error = 5xx-like, timeout, cancelled).",
    ["grpc_service", "grpc_method", "error_type"],
)
MODEL_DURATION = Histogram(
    "parapet_model_request_duration_seconds",
    "Duration of a call to a model provider, to the last token, by provider, model and outcome.",
    ["provider", "model", "outcome"],
    buckets=MODEL_BUCKETS,
)
MODEL_TIME_TO_FIRST_TOKEN = Histogram(
    "parapet_model_time_to_first_token_seconds",
    "Time from sending a model request to its first streamed token, by provider and model.",
    ["provider", "model"],
    buckets=MODEL_BUCKETS,
)
MODEL_ERRORS = Counter(
    "parapet_model_errors_total",
    "Failed model calls by provider, model and error type (rate_limited = 429, server_error = 5xx, timeout, "
    "other).",
    ["provider", "model", "error_type"],
)
TOKENS = Counter(
    "parapet_tokens_total",
    "Tokens consumed, by tenant, model and kind (prompt, completion, cached).",
    ["tenant", "model", "kind"],
)
COST = Counter(
    "parapet_cost_micros_total",
    "Cost in millionths of the currency unit, by tenant, model and currency.",
    ["tenant", "model", "currency"],
)
CACHE_LOOKUPS = Counter(
    "parapet_cache_lookups_total",
    "Cache lookups by cache (e.g. semantic) and result (hit, miss); hit ratio = hit / all.",
    ["cache", "result"],
)
BREAKER_STATE = Gauge(
    "parapet_breaker_state",
    "Circuit breaker state per provider and model: 0 closed, 1 half-open, 2 open.",
    ["provider", "model"],
)
MODERATION_FINDINGS = Counter(
    "parapet_moderation_findings_total",
    "Moderation findings by category, action taken and stage (input, output).",
    ["category", "action", "stage"],
)
BUDGET_DENIALS = Counter(
    "parapet_budget_denials_total",
    "Requests refused for budget or rate limit, by tenant and limit kind (budget, rate_limit).",
    ["tenant", "limit"],
)
USAGE_EVENTS_PUBLISHED = Counter(
    "parapet_usage_events_published_total", "Usage events acknowledged by JetStream (metering outbox relay)."
)
USAGE_OUTBOX_PENDING = Gauge(
    "parapet_usage_outbox_pending", "Usage events written but not yet published (metering outbox)."
)
AUDIT_RECORDS = Counter(
    "parapet_audit_records_total",
    "Audit records handled, by source (stream, rpc) and outcome (appended, duplicate, rejected).",
    ["source", "outcome"],
)
BILLING_EVENTS_SET_ASIDE = Counter(
    "parapet_billing_events_set_aside_total",
    "Usage events billing's consumer set aside because they can never be applied, by reason (undecodable, "
    "mismatched: another tenant's subject, out_of_bounds: figures or names no settlement has, refused: the "
    "database refuses their data).",
    ["reason"],
)
AUDIT_STREAM_PENDING = Gauge(
    "parapet_audit_stream_pending", "Audit stream messages not yet delivered to the audit consumer."
)
AUDIT_LAST_PERSIST = Gauge(
    "parapet_audit_last_persist_timestamp_seconds", "Unix time the audit service last committed records."
)
GATEWAY_OVERHEAD = Histogram(
    "parapet_gateway_overhead_seconds",
    "Time Parapet itself added to a chat (its duration minus the time the inference stream was open), once "
    "per chat the gateway's flow ran (StreamChat, Chat, job items), by result (ok, error, cancelled).",
    ["result"],
    buckets=OVERHEAD_BUCKETS,
)
GATEWAY_DEGRADED = Counter(
    "parapet_gateway_degraded_chats_total",
    "Chats that went on without a dependency that was down, by dependency (retrieval, moderation, metering; "
    "providers = a cached answer served because every provider failed).",
    ["dependency"],
)
GATEWAY_SPECULATIVE_CALLS = Counter(
    "parapet_gateway_speculative_calls_total",
    "Model calls the gateway started before the chat's budget hold was granted, by outcome: kept (the hold "
    "was granted, or metering was down and the policy let the chat go on), refused (the hold was refused "
    "or failed: the call was cancelled, nothing reached the caller, nothing billed), cancelled (the caller "
    "left first; nothing billed either).",
    ["outcome"],
)
GATEWAY_REFUSED_CHATS = Counter(
    "parapet_gateway_refused_chats_total",
    "Chats the gateway refused before running them, by reason (TENANT_CONCURRENCY_LIMIT: the tenant already had "
    "its limit of chats open on the replica).",
    ["reason"],
)
GATEWAY_OUTBOX_PENDING = Gauge(
    "parapet_gateway_outbox_pending",
    "Undelivered rows of the gateway outbox, by kind (audit, settlement).",
    ["kind"],
)
GATEWAY_OUTBOX_DELIVERED = Counter(
    "parapet_gateway_outbox_delivered_total",
    "Gateway outbox rows the relay delivered (a settlement metering refused for good included), by kind.",
    ["kind"],
)

ALL_METRICS = (
    RPC_DURATION,
    RPC_ERRORS,
    MODEL_DURATION,
    MODEL_TIME_TO_FIRST_TOKEN,
    MODEL_ERRORS,
    TOKENS,
    COST,
    CACHE_LOOKUPS,
    BREAKER_STATE,
    MODERATION_FINDINGS,
    BUDGET_DENIALS,
    USAGE_EVENTS_PUBLISHED,
    USAGE_OUTBOX_PENDING,
    BILLING_EVENTS_SET_ASIDE,
    AUDIT_RECORDS,
    AUDIT_STREAM_PENDING,
    AUDIT_LAST_PERSIST,
    GATEWAY_OVERHEAD,
    GATEWAY_DEGRADED,
    GATEWAY_SPECULATIVE_CALLS,
    GATEWAY_REFUSED_CHATS,
    GATEWAY_OUTBOX_PENDING,
    GATEWAY_OUTBOX_DELIVERED,
)


def series_names() -> frozenset[str]:
    """Every series name the kit exposes (``_bucket``/``_sum``/``_count``, ``_total``, ...), for checks."""
    names: set[str] = set()
    for metric in ALL_METRICS:
        for family in metric.describe():
            names.add(family.name)
            kind = family.type
            if kind == "counter":
                names.update({family.name + "_total", family.name + "_created"})
            elif kind == "histogram":
                names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count", "_created"))
    return frozenset(names)


def series_labels() -> dict[str, frozenset[str]]:
    """The label names of every series name the kit exposes (``le`` included on ``_bucket``), for checks."""
    labels: dict[str, frozenset[str]] = {}
    for metric in ALL_METRICS:
        names = frozenset(metric._labelnames)
        for family in metric.describe():
            labels[family.name] = names
            if family.type == "counter":
                labels[family.name + "_total"] = labels[family.name + "_created"] = names
            elif family.type == "histogram":
                for suffix in ("_sum", "_count", "_created"):
                    labels[family.name + suffix] = names
                labels[family.name + "_bucket"] = names | {"le"}
    return labels


# --- RPCs (recorded by the kit's server interceptor for every service) ---

_CLIENT_CODES = frozenset(
    {
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
    }
)


def rpc_error_type(code: str) -> str | None:
    """The error type of a gRPC status code name, or None for OK."""
    if code == "OK":
        return None
    if code == "RESOURCE_EXHAUSTED":
        return "rate_limited"
    if code == "DEADLINE_EXCEEDED":
        return "timeout"
    if code == "CANCELLED":
        return "cancelled"
    if code in _CLIENT_CODES:
        return "client_error"
    return "server_error"  # UNAVAILABLE, INTERNAL, UNKNOWN, DATA_LOSS, UNIMPLEMENTED


def split_method(method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    _, _, rest = method.partition("/")
    service, _, name = rest.partition("/")
    return service, name


def rpc_children(method: str, code: str) -> tuple[Any, Any]:
    """The duration histogram child and the error counter child (None for OK) of ``method`` and ``code``;
    the kit's interceptor keeps them, so a call pays no label lookup."""
    service, name = split_method(method)
    kind = rpc_error_type(code)
    return (
        RPC_DURATION.labels(service, name, code),
        RPC_ERRORS.labels(service, name, kind) if kind is not None else None,
    )


# --- model calls (inference) ---


def observe_model_call(
    provider: str,
    model: str,
    seconds: float,
    *,
    time_to_first_token: float | None = None,
    error_type: str | None = None,
) -> None:
    """One model call: its duration, its first-token time when it streamed, its error type when it failed.

    ``error_type`` is ``rate_limited`` (HTTP 429), ``server_error`` (5xx), ``timeout`` or ``other``.
    """
    MODEL_DURATION.labels(provider, model, "error" if error_type else "ok").observe(seconds)
    if time_to_first_token is not None:
        MODEL_TIME_TO_FIRST_TOKEN.labels(provider, model).observe(time_to_first_token)
    if error_type is not None:
        MODEL_ERRORS.labels(provider, model, error_type).inc()


# --- usage and cost (metering, gateway) ---


def record_usage(
    tenant: str,
    model: str,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    cost_micros: int = 0,
    currency: str = "USD",
) -> None:
    """Tokens and cost of one settled request."""
    for kind, count in (
        ("prompt", prompt_tokens),
        ("completion", completion_tokens),
        ("cached", cached_tokens),
    ):
        if count:
            TOKENS.labels(tenant, model, kind).inc(count)
    if cost_micros:
        COST.labels(tenant, model, currency).inc(cost_micros)


def record_budget_denial(tenant: str, limit: str) -> None:
    """A request refused by a budget (``limit="budget"``) or a rate limit (``"rate_limit"``)."""
    BUDGET_DENIALS.labels(tenant, limit).inc()


def record_usage_published(count: int = 1) -> None:
    USAGE_EVENTS_PUBLISHED.inc(count)


def set_usage_outbox_pending(count: int) -> None:
    USAGE_OUTBOX_PENDING.set(count)


# --- inference internals ---


_cache_lookup_children: dict[tuple[str, bool], Any] = {}


def record_cache_lookup(cache: str, hit: bool) -> None:
    # Kept children: a warm Authenticate records one lookup per call, and a label lookup costs more than
    # the increment (the cache names are a handful of constants).
    child = _cache_lookup_children.get((cache, hit))
    if child is None:
        child = _cache_lookup_children[(cache, hit)] = CACHE_LOOKUPS.labels(cache, "hit" if hit else "miss")
    child.inc()


class BreakerState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


def set_breaker_state(provider: str, model: str, state: BreakerState) -> None:
    BREAKER_STATE.labels(provider, model).set(int(state))


# --- moderation ---


def record_moderation_finding(category: str, action: str, stage: str, count: int = 1) -> None:
    """``stage`` is ``input`` or ``output``; category and action are the enum value names."""
    MODERATION_FINDINGS.labels(category, action, stage).inc(count)


BILLING_SET_ASIDE_REASONS = ("undecodable", "mismatched", "out_of_bounds", "refused")
# Exported at 0 from the start: Prometheus' increase() sees nothing in a series whose first sample is already 1,
# and set-asides are rare enough that the first may be the only one (the alert would then never fire).
for _reason in BILLING_SET_ASIDE_REASONS:
    BILLING_EVENTS_SET_ASIDE.labels(_reason)


def record_billing_set_aside(reason: str) -> None:
    """``reason``: one of ``BILLING_SET_ASIDE_REASONS``."""
    BILLING_EVENTS_SET_ASIDE.labels(reason).inc()


# --- audit ---


AUDIT_SOURCES = ("stream", "rpc")
AUDIT_OUTCOMES = ("appended", "duplicate", "rejected")
# Exported at 0 from the start, like the set-asides above: ParapetAuditRecordsRejected uses increase(), which
# sees nothing in a series whose first sample is already 1, and a first rejection may well be the only one.
for _source in AUDIT_SOURCES:
    for _outcome in AUDIT_OUTCOMES:
        AUDIT_RECORDS.labels(_source, _outcome)


def record_audit(source: str, outcome: str, count: int = 1) -> None:
    """``source``: ``stream`` or ``rpc``; ``outcome``: ``appended``, ``duplicate`` or ``rejected``."""
    if count:
        AUDIT_RECORDS.labels(source, outcome).inc(count)


def mark_audit_persisted(unix_time: float) -> None:
    AUDIT_LAST_PERSIST.set(unix_time)


def set_audit_stream_pending(count: int) -> None:
    AUDIT_STREAM_PENDING.set(count)


# --- gateway ---


def observe_chat(parapet_seconds: float, result: str, degraded: Iterable[str] = ()) -> None:
    """One chat the gateway's flow ran: the time Parapet added, how it ended (``ok``, ``error``,
    ``cancelled``), and each dependency it went on without (``retrieval``, ``moderation``, ``metering``,
    ``providers``)."""
    GATEWAY_OVERHEAD.labels(result).observe(parapet_seconds)
    for dependency in degraded:
        GATEWAY_DEGRADED.labels(dependency).inc()


def record_speculative_call(outcome: str) -> None:
    """A model call started beside its chat's budget hold ended its wait: ``kept``, ``refused``,
    ``cancelled``."""
    GATEWAY_SPECULATIVE_CALLS.labels(outcome).inc()


def record_gateway_refused_chat(reason: str) -> None:
    GATEWAY_REFUSED_CHATS.labels(reason).inc()


def set_gateway_outbox_pending(kind: str, count: int) -> None:
    GATEWAY_OUTBOX_PENDING.labels(kind).set(count)


def record_gateway_outbox_delivered(kind: str, count: int) -> None:
    # Called with 0 too: the series then exists from the relay's first round, and the stall alert's
    # increase() sees a relay that never delivered anything (a missing series would hide it).
    GATEWAY_OUTBOX_DELIVERED.labels(kind).inc(count)


# --- the /metrics endpoint ---


def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return _generate_latest(registry)


class MetricsServer:
    """A minimal asyncio HTTP server answering ``GET /metrics`` (and 404 otherwise) on its own port."""

    #: How long a scraper may take to send its whole request head (request line and headers).
    HEAD_SECONDS = 5.0
    #: The longest request head read: a scrape's is a few hundred bytes.
    MAX_HEAD_BYTES = 16 * 1024
    #: How long the answer may take to leave: a client that never reads it holds no task beyond that.
    WRITE_SECONDS = 30.0

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self._registry = registry
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics endpoint listening", extra={"host": host, "port": self.port})
        return self.port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # One bound for the whole head, not one per line: a client sending a header line every few seconds
            # would otherwise hold its connection (and its task) open forever.
            request_line = await within(self.HEAD_SECONDS, self._read_head(reader))
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            if len(parts) >= 2 and parts[0] == "GET" and path == "/metrics":
                body, status, content_type = exposition(self._registry), "200 OK", CONTENT_TYPE_LATEST
            else:
                body, status, content_type = b"not found\n", "404 Not Found", "text/plain"
            head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode("latin-1") + b"Connection: close\r\n\r\n" + body)
            await within(self.WRITE_SECONDS, writer.drain())
        except (TimeoutError, ConnectionError, ValueError):
            pass  # a slow, vanished or garbled client (ValueError: a line over the reader's limit)
        finally:
            writer.close()

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes:
        """The request line, after reading the headers up to the blank line (nothing in them matters here)."""
        request_line = await reader.readline()
        read = len(request_line)
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            read += len(line)
            if read > self.MAX_HEAD_BYTES:
                raise ValueError("request head too long")
        return request_line

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
