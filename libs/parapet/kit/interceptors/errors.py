"""Exceptions to ``google.rpc.Status``: typed errors keep their details, anything else becomes INTERNAL.

An unexpected exception is logged with its traceback and the caller gets only ``INTERNAL`` with reason
``INTERNAL_ERROR`` and the request id: exception text can hold SQL, file paths or secrets and must never
reach a caller. Works mid-stream too: the messages already sent stay sent and the stream ends with the
status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
import grpc.aio

from parapet.kit.context import request_id_var, rpc_info_var
from parapet.kit.errors import Internal, ParapetError, to_status
from parapet.kit.interceptors._wrap import HandlerInterceptor, StreamBehavior, UnaryBehavior

log = logging.getLogger("parapet.kit.errors")


def _record(code: grpc.StatusCode | None, reason: str | None = None) -> None:
    info = rpc_info_var.get()
    if info is not None:
        info.code = (code or grpc.StatusCode.OK).name
        info.reason = reason


async def _fail(exc: BaseException, context: grpc.aio.ServicerContext, method: str) -> NoReturn:
    """Turn ``exc`` into the call's final status; always raises."""
    if isinstance(exc, grpc.aio.AbortError):
        _record(context.code())  # the handler aborted by itself: its status stands
        raise exc
    if isinstance(exc, asyncio.CancelledError):
        _record(grpc.StatusCode.CANCELLED)  # the client went away or the deadline passed
        raise exc
    if isinstance(exc, ParapetError):
        _record(exc.code, exc.reason)
        await context.abort_with_status(to_status(exc))
    if not isinstance(exc, Exception):
        raise exc  # KeyboardInterrupt, SystemExit: not ours to translate
    log.error("unhandled exception in %s", method, exc_info=exc, extra={"method": method})
    request_id = request_id_var.get()
    internal = Internal(f"internal error (request id {request_id})" if request_id else "internal error")
    _record(internal.code, internal.reason)
    await context.abort_with_status(to_status(internal))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


class ErrorsInterceptor(HandlerInterceptor):
    def around_unary(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                await _fail(exc, context, method)
            _record(context.code())
            return response

        return call

    def around_stream(self, behavior: StreamBehavior, method: str) -> StreamBehavior:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                await _fail(exc, context, method)
            _record(context.code())

        return stream
