"""The governed chat flow, everything after authentication: the seam the chat RPCs and the job worker share.

``ChatFlow.stream`` runs authorize → screen input → (reserve budget ∥ retrieve) → infer → screen output while
streaming → unmask → summary, then settles usage and audits off the caller's critical path. ``complete`` is
the same flow collected into one ``ChatResponse``. Errors are the kit's typed errors (``parapet.kit.errors``),
exactly what a ``Chat`` caller receives as its status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from parapet.gateway.v1 import chat_service_pb2
from parapet.kit.app import Resources
from parapet.kit.errors import Unimplemented
from services.gateway.caller import Caller
from services.gateway.settings import GatewaySettings


class ChatFlow:
    """One per process; safe for concurrent use (it holds channels and caches, no per-request state)."""

    @classmethod
    async def open(cls, resources: Resources[GatewaySettings]) -> ChatFlow:
        """The flow on the service's resources; its channels and background tasks close with them."""
        return cls()

    async def stream(
        self, caller: Caller, request: chat_service_pb2.StreamChatRequest, *, request_id: str
    ) -> AsyncIterator[chat_service_pb2.StreamChatResponse]:
        """The answer as events: citations, then screened text deltas and notices, then one summary."""
        raise Unimplemented("the chat flow is being built (issue #10)")
        yield chat_service_pb2.StreamChatResponse()  # pragma: no cover - makes this an async generator

    async def complete(
        self, caller: Caller, request: chat_service_pb2.ChatRequest, *, request_id: str
    ) -> chat_service_pb2.ChatResponse:
        """The same flow as :meth:`stream`, collected."""
        raise Unimplemented("the chat flow is being built (issue #10)")
