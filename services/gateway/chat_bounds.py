"""The two time bounds of a chat RPC that hold whatever its caller does: how long the chat may run, and how long
its caller may leave the next message unread.

A caller that sets no deadline and stops reading (its connection alive: it answers keepalive pings) kept its
StreamChat waiting on flow control for ever, and with it the model call (inference's idle timeout counts only
its waits for the provider, not its waits to write), the provider's response and the budget hold, which metering
expires after its lifetime: from then on the tenant's budget no longer counted the chat. So a chat gets the
gateway's own deadline when the caller's is absent or later (the deadline every downstream call and the flow's
"was it the deadline?" checks already use), and a StreamChat caller that accepts no message for the send
timeout is let go: the chat is stopped as if the caller had left, settled for what was produced, and audited
DEADLINE_EXCEEDED ``CALLER_NOT_READING``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc.aio

from parapet.kit.context import deadline_var
from parapet.kit.errors import DeadlineExceeded


class CallerNotReading(DeadlineExceeded):
    """The caller accepted no message for the send timeout. Thrown into the running chat, which records it as
    its status and settles it like a chat whose caller left (what reached a provider is billed)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"The caller accepted no message for {seconds:g} s; the chat was ended.",
            reason="CALLER_NOT_READING",
        )


@dataclass(frozen=True)
class ChatBounds:
    max_seconds: float  # the chat's deadline when the caller's is absent or later
    send_timeout: float  # the longest one message may wait for the caller to accept it

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Runs the block under the chat's deadline: the caller's, or ``max_seconds`` from now when that comes
        first. The gateway's own deadline is put where the caller's would be (``deadline_var``, which every
        downstream call and ``deadline_passed`` read), and when it passes the block is cancelled as grpc
        cancels a handler at its caller's deadline, then ``DeadlineExceeded`` is raised. Only in an RPC's own
        task: the deadline stays set for the rest of it."""
        cap = time.monotonic() + self.max_seconds
        caller = deadline_var.get()
        if caller is not None and caller <= cap:
            yield  # grpc ends the handler at the caller's own deadline
            return
        deadline_var.set(cap)
        limit = asyncio.timeout(cap - time.monotonic())
        try:
            async with limit:
                yield
        except TimeoutError:
            if not limit.expired():
                raise  # another TimeoutError from the chat (a library's): not the limit, so not DEADLINE_EXCEEDED
            raise DeadlineExceeded(
                f"The chat did not finish within the gateway's limit of {self.max_seconds:g} s.",
                reason="DEADLINE_EXCEEDED",
            ) from None

    async def send(self, context: grpc.aio.ServicerContext, message: Any) -> None:
        """``context.write(message)``, or ``CallerNotReading`` when the caller does not take it in time."""
        limit = asyncio.timeout(self.send_timeout)
        try:
            async with limit:
                await context.write(message)
        except TimeoutError:
            if not limit.expired():
                raise
            raise CallerNotReading(self.send_timeout) from None
