"""ChatService: the caller's credential to a Caller, then the flow; the time Parapet added in the trailers.
DeleteReplays erases a user's stored idempotent answers."""

from __future__ import annotations

import contextlib
import uuid

import grpc.aio

from parapet.auth.v1 import permission_pb2
from parapet.gateway.v1 import chat_pb2, chat_service_pb2, chat_service_pb2_grpc
from parapet.kit.context import current_request_id, current_rpc
from parapet.kit.errors import InvalidArgument
from services.gateway.caller import Caller
from services.gateway.chat_bounds import CallerNotReading, ChatBounds
from services.gateway.flow import ChatFlow
from services.gateway.identity import Authenticator, bearer
from services.gateway.tenant_slots import TenantSlots

OVERHEAD_KEY = "parapet-overhead-ms"


def _client_ip() -> str:
    # The edge: the peer the kit read when the call began, never an address a caller forwarded.
    info = current_rpc()
    return info.peer_address() if info is not None else ""


def _overhead(summary: chat_pb2.ChatSummary) -> tuple[tuple[str, str], ...]:
    millis = summary.parapet_duration.ToNanoseconds() / 1e6
    return ((OVERHEAD_KEY, f"{millis:.3f}"),)


class ChatServicer(chat_service_pb2_grpc.ChatServiceServicer):
    def __init__(
        self, authenticator: Authenticator, flow: ChatFlow, bounds: ChatBounds, slots: TenantSlots
    ) -> None:
        self._authenticator = authenticator
        self._flow = flow
        self._bounds = bounds
        self._slots = slots

    async def caller(self, context: grpc.aio.ServicerContext) -> Caller:
        """The authenticated caller of ``context`` (also JobService's authentication)."""
        credential = bearer(tuple(context.invocation_metadata() or ()))
        return await self._authenticator.authenticate(credential, client_ip=_client_ip())

    async def StreamChat(  # type: ignore[override]  # grpc.aio takes a coroutine that calls context.write
        self, request: chat_service_pb2.StreamChatRequest, context: grpc.aio.ServicerContext
    ) -> None:
        # Written with context.write rather than yielded: a write that waits on a caller who stopped reading is
        # then this handler's own wait, which it can bound (chat_bounds.py).
        async with self._bounds.running():
            request_id = current_request_id() or str(uuid.uuid4())
            await context.send_initial_metadata((("x-request-id", request_id),))
            caller = await self.caller(context)
            with self._slots.hold(caller.tenant_id):
                # Closed as this handler is (see ChatFlow.stream): the chat's settlement waits for nothing else.
                stream = self._flow.stream(caller, request, request_id=request_id)
                async with contextlib.aclosing(stream) as events:
                    async for event in events:
                        if event.HasField("summary"):
                            context.set_trailing_metadata(_overhead(event.summary))
                        try:
                            await self._bounds.send(context, event)
                        except CallerNotReading as error:
                            # Into the chat, which records it as its status and settles what was produced.
                            await events.athrow(error)
                            raise

    async def Chat(
        self, request: chat_service_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> chat_service_pb2.ChatResponse:
        async with self._bounds.running():
            request_id = current_request_id() or str(uuid.uuid4())
            await context.send_initial_metadata((("x-request-id", request_id),))
            caller = await self.caller(context)
            with self._slots.hold(caller.tenant_id):
                response = await self._flow.complete(caller, request, request_id=request_id)
            context.set_trailing_metadata(_overhead(response.summary))
            return response

    async def DeleteReplays(
        self, request: chat_service_pb2.DeleteReplaysRequest, context: grpc.aio.ServicerContext
    ) -> chat_service_pb2.DeleteReplaysResponse:
        caller = await self.caller(context)
        if not request.user_id:
            raise InvalidArgument("user_id is required", field_violations=[("user_id", "is required")])
        if request.user_id != caller.principal.subject:
            await self._flow.policies.authorizer.require(
                caller, permission_pb2.PERMISSION_ADMIN, why="deleting another user's stored answers"
            )
        deleted = await self._flow.delete_replays(caller.tenant_id, request.user_id)
        return chat_service_pb2.DeleteReplaysResponse(deleted_count=deleted)
