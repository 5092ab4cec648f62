"""Inference's ``StreamComplete`` for one chat, and the time the chat spent waiting for it.

The summary's ``parapet_duration`` (and the ``parapet-overhead-ms`` trailer, and the overhead histogram) is the
chat's duration minus the time it waited for inference. Between the call's start and the first message the
flow may be busy elsewhere: waiting for a budget hold the call was started beside (``headroom.py``), or
sending citations and notices. So the first message is read by a task of its own from the moment the call
starts, and its wait is counted from the call's start to its arrival; the later messages count the time the
flow waited for each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from parapet.inference.v1 import inference_service_pb2

Message = inference_service_pb2.StreamCompleteResponse


async def _first_of(messages: AsyncIterator[Message]) -> Message | None:
    try:
        return await anext(messages)
    except StopAsyncIteration:
        return None


class InferenceStream:
    """The messages of one started ``StreamComplete`` call; ``waited`` is the time spent waiting for them."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self.waited = 0.0
        self._started = time.perf_counter()
        self._arrived: float | None = None
        self._messages: AsyncIterator[Message] = call.__aiter__()
        self._first = asyncio.ensure_future(_first_of(self._messages))
        self._first.add_done_callback(self._on_first)

    def _on_first(self, first: asyncio.Future[Message | None]) -> None:
        self._arrived = time.perf_counter()
        if not first.cancelled():
            first.exception()  # marked retrieved: a chat that stopped before reading it never looks

    async def messages(self) -> AsyncIterator[Message]:
        """The messages in order; an inference error is raised as the call's ``AioRpcError``."""
        try:
            first = await self._first
        finally:
            self.waited += (self._arrived or time.perf_counter()) - self._started
        if first is None:
            return
        yield first
        while True:
            asked = time.perf_counter()
            try:
                message = await anext(self._messages)
            except StopAsyncIteration:
                return
            finally:
                self.waited += time.perf_counter() - asked
            yield message

    def cancel(self) -> None:
        """Stops the call (and so the provider's request); a no-op once it finished."""
        self._first.cancel()
        self._call.cancel()
