"""Wrapping grpc.aio method handlers, for unary and streaming responses alike.

grpc.aio's ``ServerInterceptor`` only hands an interceptor the ``RpcMethodHandler``; to act around the
call itself (and around every message of a server stream) the interceptor builds a new handler whose
behavior wraps the original one. :class:`HandlerInterceptor` does that once, so each kit interceptor only
writes an ``around_unary`` and an ``around_stream``.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from parapet.kit.inbound import tolerant

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def as_stream(behavior: Callable[..., Any]) -> StreamBehavior:
    """A response-streaming behavior as an async generator, whichever style it was written in.

    grpc.aio accepts both an async generator and a coroutine that calls ``context.write``; wrappers need
    one shape to iterate over.
    """

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        result = behavior(request, context)
        if inspect.isawaitable(result):
            await result  # it wrote its responses with context.write
            return
        async for response in result:
            yield response

    return stream


class HandlerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Base for interceptors that act around each call (and each streamed response).

    Wrapped handlers are cached per method: grpc.aio asks the interceptor for every call, and building
    the wrapper closures once instead of per call keeps the kit's per-RPC overhead down.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    def applies_to(self, method: str) -> bool:
        return True

    def around_unary(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        return behavior

    def around_stream(self, behavior: StreamBehavior, method: str) -> StreamBehavior:
        return behavior

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not self.applies_to(method):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = wrap_handler(handler, method, self)
        if len(self._wrapped) < 10_000:  # bounded: a generic handler may answer any method name
            self._wrapped[method] = (handler, wrapped)
        return wrapped


def wrap_handler(handler: Any, method: str, interceptor: HandlerInterceptor) -> Any:
    """A handler equal to ``handler`` except that its behavior goes through ``interceptor``, and a request
    that does not parse reaches it as ``inbound.Malformed``, for the kit to refuse (``inbound.checked``)."""
    kwargs = {
        "request_deserializer": tolerant(handler.request_deserializer),
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            interceptor.around_unary(handler.unary_unary, method), **kwargs
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            interceptor.around_unary(handler.stream_unary, method), **kwargs
        )
    if handler.unary_stream is not None:
        stream = interceptor.around_stream(as_stream(handler.unary_stream), method)
        return grpc.unary_stream_rpc_method_handler(stream, **kwargs)
    if handler.stream_stream is not None:
        stream = interceptor.around_stream(as_stream(handler.stream_stream), method)
        return grpc.stream_stream_rpc_method_handler(stream, **kwargs)
    return handler
