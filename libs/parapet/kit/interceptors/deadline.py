"""Deadline propagation, server side: remember when the incoming call must end.

The absolute deadline goes into a contextvar so that every outgoing call made while serving this RPC
gets at most the time that is left (see ``parapet.kit.clients``): work for a caller who has given up is
wasted, and a chain of services must not outlive its first caller's deadline.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc.aio

from parapet.kit.context import deadline_var
from parapet.kit.errors import DeadlineExceeded
from parapet.kit.interceptors._wrap import HandlerInterceptor, StreamBehavior, UnaryBehavior


def _enter(context: grpc.aio.ServicerContext) -> None:
    remaining = context.time_remaining()
    if remaining is None:
        deadline_var.set(None)
        return
    if remaining <= 0:
        raise DeadlineExceeded("the call's deadline passed before it was served", reason="DEADLINE_EXCEEDED")
    # Set without reset: grpc.aio serves each RPC in a task of its own, whose context dies with it.
    deadline_var.set(time.monotonic() + remaining)


class DeadlineInterceptor(HandlerInterceptor):
    def around_unary(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            _enter(context)
            return await behavior(request, context)

        return call

    def around_stream(self, behavior: StreamBehavior, method: str) -> StreamBehavior:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            _enter(context)
            async for response in behavior(request, context):
                yield response

        return stream
