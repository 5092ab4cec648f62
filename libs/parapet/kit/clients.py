"""Typed async clients for calls between services, with deadlines, identity, tracing and retries built in.

Every outgoing call made while serving an RPC
- gets at most the incoming call's remaining time (minus a small margin for the way back), or the
  channel's default timeout when there is no incoming deadline, so no call waits forever;
- carries the caller's internal identity token and request id unchanged;
- continues the trace (OpenTelemetry client interceptor);
- is retried by gRPC itself on UNAVAILABLE (up to 3 attempts with backoff, within the deadline) when
  the contract marks the method safe to repeat; other methods are never repeated behind the caller's back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

from parapet.kit import telemetry
from parapet.kit.config import ServiceSettings
from parapet.kit.context import remaining_time, request_id_var, token_var
from parapet.kit.descriptors import safe_to_repeat_paths

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


def service_config(retryable: Iterable[str]) -> dict[str, Any]:
    """The channel's gRPC service config: round-robin, fail fast, and retries for ``retryable`` only.

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
    return {
        # Spread calls over every address the target resolves to (a headless Kubernetes Service behind a
        # `dns:///` target lists every pod); the default pick_first would pin a client to one replica.
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": method_configs,
    }


def outgoing_timeout(explicit: float | None, default: float | None) -> float | None:
    """The timeout of an outgoing call: the smallest of the explicit one and the incoming remainder."""
    remaining = remaining_time()
    if remaining is not None:
        remaining = max(remaining - DEADLINE_MARGIN_SECONDS, 0.0)
    candidates = [t for t in (explicit, remaining) if t is not None]
    if candidates:
        return min(candidates)
    return default


def outgoing_metadata(metadata: Any) -> grpc.aio.Metadata:
    """The call's metadata plus the current token and request id, unless the caller set its own."""
    result = grpc.aio.Metadata(*(tuple(metadata) if metadata is not None else ()))
    token = token_var.get()
    if token is not None and "authorization" not in result:
        result.add("authorization", f"Bearer {token}")
    request_id = request_id_var.get()
    if request_id is not None and "x-request-id" not in result:
        result.add("x-request-id", request_id)
    return result


class _PropagatingInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.aio.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.aio.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Deadline, identity and request id propagation for all four call shapes."""

    def __init__(self, default_timeout: float | None) -> None:
        self._default_timeout = default_timeout

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=outgoing_timeout(details.timeout, self._default_timeout),
            metadata=outgoing_metadata(details.metadata),
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)

    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


def channel(
    target: str,
    settings: ServiceSettings | None = None,
    *,
    default_timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    tracer_provider: Any = None,
    options: Sequence[tuple[str, Any]] = (),
    retryable_methods: Iterable[str] | None = None,
) -> grpc.aio.Channel:
    """A channel to another service (``host:port``) with the kit's client interceptors.

    ``default_timeout`` applies to calls with neither an explicit timeout nor an incoming deadline; pass
    None for channels that carry long-lived watch streams. With ``settings`` naming a TLS CA, the
    channel verifies the peer against it and presents this service's certificate (mutual TLS);
    otherwise it is plaintext (a mesh may add mTLS).
    """
    interceptors: list[Any] = [
        # OpenTelemetry first: its span covers the call, including gRPC's own retries.
        *telemetry.client_interceptors(tracer_provider),
        _PropagatingInterceptor(default_timeout),
    ]
    retryable = safe_to_repeat_paths() if retryable_methods is None else frozenset(retryable_methods)
    channel_options = [
        ("grpc.service_config", json.dumps(service_config(retryable))),
        ("grpc.enable_retries", 1),
        *options,
    ]
    credentials = settings.tls().channel_credentials() if settings is not None else None
    if credentials is not None:
        return grpc.aio.secure_channel(
            target, credentials, options=channel_options, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(target, options=channel_options, interceptors=interceptors)


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
