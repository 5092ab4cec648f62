"""The kit's server interceptor: tracing, request id and logging, metrics, errors, deadline and identity
around every call, in one wrapper.

Each concern used to be an interceptor of its own (plus OpenTelemetry's), and each wrapper layer cost an
extra coroutine (or async generator) per call and per streamed message; fused, a unary call pays one. The
steps keep the order the separate interceptors had, outermost first:

1. trace context (``parapet.kit.rpc_tracing``), so everything below logs the RPC's trace id;
2. request id, and at the end the RPC's log line;
3. metrics, at the end, with the status code the caller receives;
4. errors: any exception below, deadline and identity rejections included, becomes a rich status;
5. deadline, then 6. identity, then the handler.

What can be decided from the method name alone (public? traced? measured? an edge method?) is decided
once per method, when grpc.aio first asks for its handler.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc.aio

from parapet.kit import inbound
from parapet.kit.context import (
    CLIENT_ADDRESS_KEY,
    MAX_CLIENT_ADDRESS_LENGTH,
    RpcInfo,
    request_id_var,
    rpc_info_var,
)
from parapet.kit.identity import TokenVerifier
from parapet.kit.interceptors._wrap import HandlerInterceptor, StreamBehavior, UnaryBehavior
from parapet.kit.interceptors.deadline import enter_deadline
from parapet.kit.interceptors.errors import fail, is_unexpected, record_outcome
from parapet.kit.interceptors.identity import ALWAYS_PUBLIC_PREFIXES, authenticate
from parapet.kit.interceptors.logging import REQUEST_ID_KEY, is_sane_request_id, log_rpc, new_request_id
from parapet.kit.interceptors.metrics import RpcMetrics
from parapet.kit.rpc_tracing import NOT_TRACED_PREFIXES, TRACEPARENT, TRACESTATE, ServerTracing

# Probes and tooling: no metrics, no spans, and their successes logged at DEBUG.
_INFRASTRUCTURE_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the kit does for one method, decided once."""

    method: str
    authenticate: bool
    edge: bool  # called from outside the suite: the request id is always chosen here
    traced: bool
    infrastructure: bool
    check_text: bool  # the kit refuses text holding U+0000 (the servicer does not, per item)
    check_enums: bool  # the kit refuses undeclared enum numbers (the method keeps newer ones as they are)


@dataclass(slots=True)
class _Call:
    info: RpcInfo
    authorization: list[Any]
    span: Any
    unexpected: BaseException | None = None


class KitServerInterceptor(HandlerInterceptor):
    """``public_methods`` skip identity and are the edge methods (called by clients outside the suite):
    their request id is chosen here, since services use it as an idempotency key (e.g. a budget
    reservation), and a client choosing it could replay another request's; the client's own id is only
    logged."""

    def __init__(
        self,
        verifier: TokenVerifier,
        public_methods: Iterable[str],
        tracing: ServerTracing,
        nul_checked_by_servicer: Iterable[str] = (),
        open_enum_methods: Iterable[str] = (),
    ) -> None:
        super().__init__()
        self._verifier = verifier
        self._public = frozenset(public_methods)
        self._nul_by_servicer = frozenset(nul_checked_by_servicer)
        self._open_enums = frozenset(open_enum_methods)
        self._tracing = tracing
        self._metrics = RpcMetrics()

    def _plan(self, method: str) -> _Plan:
        always_public = method.startswith(ALWAYS_PUBLIC_PREFIXES)
        return _Plan(
            method=method,
            authenticate=not always_public and method not in self._public,
            edge=method in self._public,
            traced=not method.startswith(NOT_TRACED_PREFIXES),
            infrastructure=method.startswith(_INFRASTRUCTURE_PREFIXES),
            check_text=method not in self._nul_by_servicer,
            check_enums=method not in self._open_enums,
        )

    def _begin(self, plan: _Plan, context: grpc.aio.ServicerContext) -> _Call:
        # One pass over the metadata for everything the kit reads from it.
        metadata = context.invocation_metadata() or ()
        authorization: list[Any] = []
        incoming_id = traceparent = tracestate = forwarded_client = None
        for key, value in metadata:
            if key == "authorization":
                authorization.append(value)
            elif key == REQUEST_ID_KEY:
                if incoming_id is None and is_sane_request_id(value):
                    incoming_id = value
            elif key == TRACEPARENT:
                traceparent = value
            elif key == TRACESTATE:
                tracestate = value
            elif (
                key == CLIENT_ADDRESS_KEY
                and forwarded_client is None
                and isinstance(value, str)
                and len(value) <= MAX_CLIENT_ADDRESS_LENGTH
            ):
                forwarded_client = value
        peer = context.peer() or ""
        if plan.edge:
            info = RpcInfo(
                plan.method,
                new_request_id(),
                client_request_id=incoming_id,
                peer=peer,
                forwarded_client=forwarded_client,
            )
        else:
            info = RpcInfo(
                plan.method, incoming_id or new_request_id(), peer=peer, forwarded_client=forwarded_client
            )
        # Set without reset: grpc.aio serves each RPC in a task of its own, whose context dies with it.
        request_id_var.set(info.request_id)
        rpc_info_var.set(info)
        span = self._tracing.start(plan.method, metadata, traceparent, tracestate) if plan.traced else None
        return _Call(info, authorization, span)

    async def _admit(self, plan: _Plan, call: _Call, context: grpc.aio.ServicerContext) -> None:
        enter_deadline(context)
        if plan.authenticate:
            await authenticate(self._verifier, call.authorization, call.info)

    async def _fail(self, exc: BaseException, call: _Call, context: grpc.aio.ServicerContext) -> NoReturn:
        if is_unexpected(exc):
            call.unexpected = exc
        await fail(exc, context, call.info)

    def _end(self, plan: _Plan, call: _Call, context: grpc.aio.ServicerContext) -> None:
        info = call.info
        if info.code is None:  # cancelled from outside, or an abort the handler raised past us
            code = context.code()
            info.code = code.name if isinstance(code, grpc.StatusCode) else "OK"
        seconds = time.perf_counter() - info.started
        if not plan.infrastructure:
            self._metrics.observe(plan.method, info.code, seconds)
        log_rpc(info, seconds, quiet=plan.infrastructure)
        if call.span is not None:
            self._tracing.finish(call.span, info.code, call.unexpected, info.peer)

    def around_unary(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        plan = self._plan(method)

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = self._begin(plan, context)
            try:
                try:
                    await self._admit(plan, call, context)
                    # Always: a request that did not parse is refused here even when neither check applies.
                    request = inbound.checked(request, text=plan.check_text, enums=plan.check_enums)
                    response = await behavior(request, context)
                except BaseException as exc:
                    await self._fail(exc, call, context)
                record_outcome(call.info, context)
                return response
            finally:
                self._end(plan, call, context)

        return unary

    def around_stream(self, behavior: StreamBehavior, method: str) -> StreamBehavior:
        plan = self._plan(method)

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = self._begin(plan, context)
            try:
                try:
                    await self._admit(plan, call, context)
                    # Always: a request that did not parse is refused here even when neither check applies.
                    request = inbound.checked(request, text=plan.check_text, enums=plan.check_enums)
                    async for response in behavior(request, context):
                        yield response
                except BaseException as exc:
                    await self._fail(exc, call, context)
                record_outcome(call.info, context)
            finally:
                self._end(plan, call, context)

        return stream
