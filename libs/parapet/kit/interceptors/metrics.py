"""RPC metrics for every service: a latency histogram by method and status code, errors by type.

Runs right inside the logging interceptor and outside the errors interceptor, so the status code it
records is the one the caller receives (the errors interceptor writes it into ``RpcInfo``). Health and
reflection calls are not recorded: a probe every second would only add noise.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from parapet.kit import metrics
from parapet.kit.context import rpc_info_var
from parapet.kit.interceptors._wrap import HandlerInterceptor, StreamBehavior, UnaryBehavior

_NOT_MEASURED = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _code(context: grpc.aio.ServicerContext) -> str:
    info = rpc_info_var.get()
    if info is not None and info.code is not None:
        return info.code
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "OK"


class MetricsInterceptor(HandlerInterceptor):
    def applies_to(self, method: str) -> bool:
        return not method.startswith(_NOT_MEASURED)

    def around_unary(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                return await behavior(request, context)
            finally:
                metrics.observe_rpc(method, _code(context), time.perf_counter() - started)

        return call

    def around_stream(self, behavior: StreamBehavior, method: str) -> StreamBehavior:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                metrics.observe_rpc(method, _code(context), time.perf_counter() - started)

        return stream
