"""Inference's ``StreamComplete`` for one chat, and the time the chat spent waiting for it.

The summary's ``parapet_duration`` (and the ``parapet-overhead-ms`` trailer, and the overhead histogram) is the
chat's duration minus the time it waited for inference. Between the call's start and the first message the
flow may be busy elsewhere: waiting for a budget hold the call was started beside (``headroom.py``), or
sending citations and notices. So the first message is read by a task of its own from the moment the call
starts, and its wait is counted from the call's start to its arrival; the later messages count the time the
flow waited for each.

A ``PromptSent`` (asked for by the flow: ``report_prompt_sent``) is not an answer: it is kept as
``prompt_sent`` and not passed on, and the first message's wait runs to the first message after it. It is what
a stream stopped before its summary is billed for (``flow._estimate``): the prompt as inference rendered it,
which the gateway cannot count itself (inference's template, the model's encoding).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from parapet.inference.v1 import completion_pb2, inference_service_pb2

Message = inference_service_pb2.StreamCompleteResponse


class InferenceStream:
    """The messages of one started ``StreamComplete`` call; ``waited`` is the time spent waiting for them."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self.waited = 0.0
        self._started = time.perf_counter()
        self._arrived: float | None = None
        self.prompt_sent: completion_pb2.PromptSent | None = None  # the latest attempt's, once one came
        self._messages: AsyncIterator[Message] = call.__aiter__()
        self._first = asyncio.ensure_future(self._next_answer())
        self._first.add_done_callback(self._on_first)

    async def _next_answer(self) -> Message | None:
        """The next message that is not a PromptSent (kept as ``prompt_sent``); None at the end."""
        async for message in self._messages:
            if message.HasField("prompt_sent"):
                self.prompt_sent = message.prompt_sent
                continue
            return message
        return None

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
                message = await self._next_answer()
            finally:
                self.waited += time.perf_counter() - asked
            if message is None:
                return
            yield message

    def cancel(self) -> None:
        """Stops the call (and so the provider's request); a no-op once it finished."""
        self._first.cancel()
        self._call.cancel()
