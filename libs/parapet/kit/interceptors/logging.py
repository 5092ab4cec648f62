"""One structured log line per RPC: method, code, reason, duration, peer, tenant, request id, trace id.

This is the outermost kit interceptor (inside OpenTelemetry's, so the span and its trace id are current
when the line is written). It also establishes the request id: the caller's ``x-request-id`` when it sent
a sane one, else a new one, so a request keeps one id across every service it touches; on the edge
methods (called from outside the suite) always a new one.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import grpc.aio

from parapet.kit.context import RpcInfo, request_id_var, rpc_info_var
from parapet.kit.interceptors._wrap import HandlerInterceptor, StreamBehavior, UnaryBehavior

log = logging.getLogger("parapet.rpc")

REQUEST_ID_KEY = "x-request-id"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Probes and tooling: logged at DEBUG so a kubelet probing every few seconds does not drown the log.
_QUIET_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_LOUD_CODES = frozenset({"INTERNAL", "UNKNOWN", "DATA_LOSS"})


def _incoming_request_id(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _SANE_REQUEST_ID.match(value):
            return value
    return None


class LoggingInterceptor(HandlerInterceptor):
    """``edge_methods`` are called by clients outside the suite (the public methods): their request id
    is chosen here, since services use it as an idempotency key (e.g. a budget reservation), and a client
    choosing it could replay another request's; the client's own id is only logged."""

    def __init__(self, edge_methods: Iterable[str] = ()) -> None:
        super().__init__()
        self._edge = frozenset(edge_methods)

    def _begin(self, context: grpc.aio.ServicerContext, method: str) -> RpcInfo:
        incoming = _incoming_request_id(context)
        if method in self._edge:
            info = RpcInfo(method=method, request_id=uuid.uuid4().hex, client_request_id=incoming)
        else:
            info = RpcInfo(method=method, request_id=incoming or uuid.uuid4().hex)
        info.peer = context.peer() or ""
        # Set without reset: grpc.aio serves each RPC in a task of its own, whose context dies with it.
        rpc_info_var.set(info)
        request_id_var.set(info.request_id)
        return info

    def _end(self, info: RpcInfo, context: grpc.aio.ServicerContext) -> None:
        if info.code is None:
            code = context.code()
            info.code = code.name if isinstance(code, grpc.StatusCode) else "OK"
        quiet = info.method.startswith(_QUIET_PREFIXES) and info.code == "OK"
        level = logging.DEBUG if quiet else logging.ERROR if info.code in _LOUD_CODES else logging.INFO
        log.log(
            level,
            "rpc",
            extra={
                "method": info.method,
                "code": info.code,
                "reason": info.reason,
                "duration_ms": round((time.perf_counter() - info.started) * 1000, 3),
                "peer": info.peer,
                "client_request_id": info.client_request_id,
                "tenant": info.tenant_id,
                "subject": info.subject,
            },
        )

    def around_unary(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            info = self._begin(context, method)
            try:
                return await behavior(request, context)
            finally:
                self._end(info, context)

        return call

    def around_stream(self, behavior: StreamBehavior, method: str) -> StreamBehavior:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            info = self._begin(context, method)
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                self._end(info, context)

        return stream
