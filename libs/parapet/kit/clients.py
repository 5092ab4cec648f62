"""Typed async clients for calls between services, with deadlines, identity, tracing and retries built in.

Every outgoing call made while serving an RPC
- gets at most the incoming call's remaining time (minus a small margin for the way back), or the
  channel's default timeout when there is no incoming deadline, so no call waits forever;
- carries the caller's internal identity token and request id unchanged;
- continues the trace (a client span with a recording tracer provider, else the trace context as is);
- is retried by gRPC itself on UNAVAILABLE (up to 3 attempts with backoff, within the deadline) when
  the contract marks the method safe to repeat; other methods are never repeated behind the caller's back.

Every channel also pings its connections (:func:`keepalive_options`), so a peer whose host vanished without
closing them is noticed within a bounded time and the channel reconnects, instead of holding every call
until its deadline; the kit's servers accept those pings and ping their clients alike (:func:`server_keepalive_options`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

from parapet.kit import rpc_tracing, telemetry
from parapet.kit.config import ServiceSettings
from parapet.kit.context import remaining_time, request_id_var, token_var
from parapet.kit.descriptors import safe_to_repeat_paths
from parapet.kit.health import ACCEPTING

# Time kept back from the remaining deadline for the response to travel back and be handled.
DEADLINE_MARGIN_SECONDS = 0.01
DEFAULT_TIMEOUT_SECONDS = 30.0

_RETRY_POLICY: dict[str, Any] = {
    "maxAttempts": 3,
    "initialBackoff": "0.05s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


#: Servers never ask for pings further apart than this, so that gRPC Go and Java clients at their minimum
#: keepalive (10 s) are welcome too.
MAX_PING_INTERVAL_REQUIRED_SECONDS = 5.0


def _millis(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


def keepalive_options(settings: ServiceSettings | None) -> list[tuple[str, Any]]:
    """The channel arguments that make a channel notice a dead connection and reconnect (its peer's host
    vanished without a FIN or RST: a node failure, a partition), measured with a black-holing proxy
    (tests/unit/kit/test_kit_clients_keepalive.py). With none of them, every call on such a connection
    waited for its deadline until TCP gave up (Linux retransmits for about 15 minutes) or, when something on
    the way still acknowledged the bytes (that proxy, a sidecar), for ever; with only keepalive time and
    timeout set, for 60 s. Each one matters:

    - ``keepalive_time_ms``: ping after this long without receiving anything;
    - ``http2.ping_timeout_ms``: what grpcio (1.85) actually waits for a ping's answer, for keepalive pings
      too (and for the BDP pings it sends as data arrives: a keepalive ping that finds one in flight waits
      on it); it defaults to 60 s and ``keepalive_timeout_ms`` does not shorten it;
    - ``keepalive_timeout_ms``: becomes the socket's ``TCP_USER_TIMEOUT``, so unacknowledged data (a
      request, a ping) to a host that is gone fails the socket in the kernel too;
    - ``keepalive_permit_without_calls`` and ``http2.max_pings_without_data`` 0: an idle connection keeps
      pinging (by default it stops after two pings), so the next call does not find it dead first;
    - ``max_reconnect_backoff_ms``: a peer down for minutes is retried often enough to be found again soon.

    Defaults are the settings' own (a channel made without settings uses them too).
    """
    fields = ServiceSettings.model_fields
    keepalive: float = fields["grpc_keepalive_seconds"].default
    timeout: float = fields["grpc_keepalive_timeout_seconds"].default
    backoff: float = fields["grpc_reconnect_backoff_max_seconds"].default
    if settings is not None:
        keepalive = settings.grpc_keepalive_seconds
        timeout = settings.grpc_keepalive_timeout_seconds
        backoff = settings.grpc_reconnect_backoff_max_seconds
    return [
        ("grpc.keepalive_time_ms", _millis(keepalive)),
        ("grpc.keepalive_timeout_ms", _millis(timeout)),
        ("grpc.http2.ping_timeout_ms", _millis(timeout)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # The first pause after a failed attempt stays gRPC's 1 s (or less when the maximum is lower).
        ("grpc.initial_reconnect_backoff_ms", _millis(min(backoff, 1.0))),
        ("grpc.max_reconnect_backoff_ms", _millis(backoff)),
    ]


def server_keepalive_options(settings: ServiceSettings) -> list[tuple[str, Any]]:
    """The server arguments that accept the pings of :func:`keepalive_options` (ours, with the same settings,
    and any client pinging every 5 s or slower) and ping clients the same way.

    Accepting: a gRPC server by default allows one ping per 5 minutes, and none at all on a connection
    without calls (2 hours); a client pinging more often is sent GOAWAY ENHANCE_YOUR_CALM ``too_many_pings``
    after two strikes, which closes the connection and fails the calls on it. Half the keepalive leaves room
    for a ping answered late. (The argument's name is ``grpc.http2.min_ping_interval_without_data_ms``: the
    ``..._min_recv_ping_...`` spelling some docs give is the C macro's name, and grpc ignores an argument it
    does not know.)

    Pinging: a stream whose client vanished (no deadline, nothing closed) otherwise kept its handler blocked
    on flow control for ever, with whatever it held (an upstream model call, a reservation); gRPC's server
    default pings after 2 hours.
    """
    interval = min(settings.grpc_keepalive_seconds / 2, MAX_PING_INTERVAL_REQUIRED_SECONDS)
    # Its own timeout, longer than the channels': it also becomes every accepted socket's TCP_USER_TIMEOUT, and
    # the gateway's callers are outside the suite, where a few seconds of loss must not cost a chat in flight.
    timeout = settings.grpc_server_keepalive_timeout_seconds
    return [
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", _millis(interval)),
        ("grpc.keepalive_time_ms", _millis(settings.grpc_keepalive_seconds)),
        ("grpc.keepalive_timeout_ms", _millis(timeout)),
        ("grpc.http2.ping_timeout_ms", _millis(timeout)),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def lists_replicas(target: str) -> bool:
    """Whether ``target`` may resolve to several replicas, each a subchannel of its own: a ``dns:`` name (a
    headless Service lists every pod) or a list of addresses. A single address (a ClusterIP name a mesh
    balances behind, ``parapet up``'s one replica) is one subchannel carrying the whole service."""
    return target.startswith("dns:") or "," in target


def service_config(retryable: Iterable[str], *, health_checked: bool) -> dict[str, Any]:
    """The channel's gRPC service config: round-robin over the replicas that take calls, fail fast, and
    retries for ``retryable`` only.

    gRPC retries a call the server answered UNAVAILABLE even after the handler's side effects, so only
    methods the contract marks safe to repeat (NO_SIDE_EFFECTS or IDEMPOTENT) get a retry policy; the
    others (a model call, creating an API key) reach the caller's own error handling exactly once.
    """
    names = []
    for path in sorted(retryable):
        service, _, method = path.lstrip("/").partition("/")
        names.append({"service": service, "method": method})
    method_configs: list[dict[str, Any]] = [{"name": [{}], "waitForReady": False}]
    if names:
        # The exact method names take precedence over the catch-all default above.
        method_configs.append({"name": names, "waitForReady": False, "retryPolicy": _RETRY_POLICY})
    config: dict[str, Any] = {
        # Spread calls over every address the target resolves to (a headless Kubernetes Service behind a
        # `dns:///` target lists every pod); the default pick_first would pin a client to one replica.
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": method_configs,
    }
    if health_checked:
        # Only over replicas that take calls: a draining one says so on this health name at once, and gets no
        # new call before it stops (kit/health.py). A server that answers UNIMPLEMENTED counts as healthy, but
        # a kit server older than the name answers SERVICE_UNKNOWN and counts as down (docs/deploy.md).
        config["healthCheckConfig"] = {"serviceName": ACCEPTING}
    return config


def outgoing_timeout(explicit: float | None, default: float | None) -> float | None:
    """The timeout of an outgoing call: the smallest of the explicit one and the incoming remainder."""
    remaining = remaining_time()
    if remaining is not None:
        remaining = max(remaining - DEADLINE_MARGIN_SECONDS, 0.0)
    candidates = [t for t in (explicit, remaining) if t is not None]
    if candidates:
        return min(candidates)
    return default


def outgoing_metadata(metadata: Any, *, trace_headers: bool = True) -> list[tuple[str, Any]]:
    """The call's metadata plus the current token, request id and trace context, unless the caller set
    its own (``trace_headers`` False: OpenTelemetry's client interceptor injects them with its span)."""
    result: list[tuple[str, Any]] = list(metadata) if metadata is not None else []
    keys = {key for key, _ in result}
    token = token_var.get()
    if token is not None and "authorization" not in keys:
        result.append(("authorization", f"Bearer {token}"))
    request_id = request_id_var.get()
    if request_id is not None and "x-request-id" not in keys:
        result.append(("x-request-id", request_id))
    if trace_headers and rpc_tracing.TRACEPARENT not in keys:
        result += rpc_tracing.current_trace_headers()
    return result


class _Outgoing:
    """What every outgoing call of a kit channel gets: its timeout and its metadata."""

    def __init__(self, default_timeout: float | None, trace_headers: bool) -> None:
        self.default_timeout = default_timeout
        self.trace_headers = trace_headers

    def options(self, timeout: float | None, metadata: Any) -> tuple[float | None, list[tuple[str, Any]]]:
        return (
            outgoing_timeout(timeout, self.default_timeout),
            outgoing_metadata(metadata, trace_headers=self.trace_headers),
        )


class _MultiCallable:
    """One method of a kit channel, any of the four call shapes: it fills in timeout and metadata, then
    calls grpc's own multicallable. So a kit channel costs a few contextvar reads per call instead of
    grpc.aio's interceptor machinery (an intercepted call runs its interceptors in a task of its own)."""

    __slots__ = ("_inner", "_outgoing")

    def __init__(self, inner: Any, outgoing: _Outgoing) -> None:
        self._inner, self._outgoing = inner, outgoing

    def __call__(
        self, request: Any = None, *, timeout: float | None = None, metadata: Any = None, **kwargs: Any
    ) -> Any:
        timeout, metadata = self._outgoing.options(timeout, metadata)
        return self._inner(request, timeout=timeout, metadata=metadata, **kwargs)


class KitChannel(grpc.aio.Channel):  # type: ignore[misc]
    """A grpc.aio channel whose calls carry the kit's deadline, identity, request id and trace context."""

    def __init__(self, inner: grpc.aio.Channel, outgoing: _Outgoing) -> None:
        self._inner = inner
        self._outgoing = outgoing

    async def __aenter__(self) -> KitChannel:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await self._inner.close(None)

    async def close(self, grace: float | None = None) -> None:
        await self._inner.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._inner.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._inner.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._inner.channel_ready()

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _MultiCallable(self._inner.unary_unary(method, *args, **kwargs), self._outgoing)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _MultiCallable(self._inner.unary_stream(method, *args, **kwargs), self._outgoing)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _MultiCallable(self._inner.stream_unary(method, *args, **kwargs), self._outgoing)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _MultiCallable(self._inner.stream_stream(method, *args, **kwargs), self._outgoing)


def channel(
    target: str,
    settings: ServiceSettings | None = None,
    *,
    default_timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    tracer_provider: Any = None,
    options: Sequence[tuple[str, Any]] = (),
    retryable_methods: Iterable[str] | None = None,
) -> KitChannel:
    """A channel to another service (``host:port``) with the kit's propagation.

    ``default_timeout`` applies to calls with neither an explicit timeout nor an incoming deadline; pass
    None for channels that carry long-lived watch streams. With ``settings`` naming a TLS CA, the
    channel verifies the peer against it and presents this service's certificate (mutual TLS);
    otherwise it is plaintext (a mesh may add mTLS). With a recording tracer provider each call gets a
    CLIENT span (OpenTelemetry's client interceptor, which also covers gRPC's own retries); without one
    the current trace context is passed on as is (``parapet.kit.rpc_tracing``). Keepalive and reconnect
    backoff come from ``settings`` (:func:`keepalive_options`); ``options`` take precedence over the kit's.
    """
    provider = tracer_provider or telemetry.current_provider()
    recording = rpc_tracing.is_recording(provider)
    interceptors = telemetry.client_interceptors(provider) if recording else None
    retryable = safe_to_repeat_paths() if retryable_methods is None else frozenset(retryable_methods)
    channel_options = [
        # First: for a repeated argument gRPC takes the first occurrence, so the caller's own win.
        *options,
        # Health-checked only where there are replicas to choose from: with one subchannel, its NOT_SERVING
        # would fail every call at once (behind a mesh, for a drain of whichever pod answered the Watch).
        ("grpc.service_config", json.dumps(service_config(retryable, health_checked=lists_replicas(target)))),
        ("grpc.enable_retries", 1),
        *keepalive_options(settings),
    ]
    credentials = settings.tls().channel_credentials() if settings is not None else None
    if credentials is not None:
        inner = grpc.aio.secure_channel(
            target, credentials, options=channel_options, interceptors=interceptors
        )
    else:
        inner = grpc.aio.insecure_channel(target, options=channel_options, interceptors=interceptors)
    return KitChannel(inner, _Outgoing(default_timeout, trace_headers=not recording))


StubT = TypeVar("StubT")


class ServiceClient(Generic[StubT]):
    """A generated stub on a kit channel; ``async with`` closes the channel.

    A service's typed client is then one line: ``ServiceClient(AuthServiceStub, target, settings)``.
    """

    def __init__(
        self,
        stub_type: Callable[[grpc.aio.Channel], StubT],
        target: str,
        settings: ServiceSettings | None = None,
        **channel_kwargs: Any,
    ) -> None:
        self.target = target
        self.channel = channel(target, settings, **channel_kwargs)
        self.stub: StubT = stub_type(self.channel)

    async def close(self, grace: float | None = None) -> None:
        await self.channel.close(grace)

    async def __aenter__(self) -> ServiceClient[StubT]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
