"""Input screening and its degradation, and the notices moderation findings turn into."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc.aio

from parapet.auth.v1 import tenant_policy_pb2
from parapet.gateway.v1 import chat_pb2
from parapet.inference.v1 import message_pb2
from parapet.kit.errors import PermissionDenied, Unavailable
from parapet.moderation.v1 import category_pb2, finding_pb2, moderation_service_pb2
from services.gateway.caller import Caller
from services.gateway.errors import is_down, relayed
from services.gateway.peers import Peers


class InputBlocked(PermissionDenied):
    """Moderation blocked the input; carries the findings for the audit record (never the values)."""

    def __init__(self, findings: Sequence[finding_pb2.Finding]) -> None:
        blocking = [f for f in findings if f.action == category_pb2.ACTION_BLOCK]
        category = category_pb2.Category.Name(blocking[0].category) if blocking else "CATEGORY_UNSPECIFIED"
        super().__init__(
            "The request was blocked by content screening.",
            reason="INPUT_BLOCKED",
            metadata={"category": category},
        )
        self.findings = tuple(findings)


@dataclass(frozen=True)
class ScreenedInput:
    texts: tuple[str, ...]  # what may leave for the provider, in message order
    # placeholder -> original value, restored in the answer; memory only, and never in a repr (logs)
    masked_values: Mapping[str, str] = field(repr=False)
    screened: bool  # False: moderation was down and the tenant allows unscreened questions
    findings: tuple[finding_pb2.Finding, ...] = ()


def degraded_notice(message: str, kind: chat_pb2.NoticeType.ValueType) -> chat_pb2.Notice:
    return chat_pb2.Notice(type=kind, message=message)


def moderation_notices(counts: Counter[tuple[int, int]]) -> list[chat_pb2.Notice]:
    """One notice per (category, action) that changed or flagged something; never the values."""
    notices = []
    for (category_number, action_number), count in sorted(counts.items()):
        category = category_pb2.Category.ValueType(category_number)
        action = category_pb2.Action.ValueType(action_number)
        name = category_pb2.Category.Name(category).removeprefix("CATEGORY_").lower().replace("_", " ")
        verb = category_pb2.Action.Name(action).removeprefix("ACTION_").lower()
        notices.append(
            chat_pb2.Notice(
                type=chat_pb2.NOTICE_TYPE_MODERATION_ACTION,
                message=f"Moderation applied '{verb}' to {count} finding(s) of {name}.",
                category=category,
                action=action,
                count=count,
            )
        )
    return notices


def count(findings: Iterable[finding_pb2.Finding]) -> Counter[tuple[int, int]]:
    return Counter((f.category, f.action) for f in findings if f.action != category_pb2.ACTION_ALLOW)


async def screen_input(
    peers: Peers,
    caller: Caller,
    messages: Sequence[message_pb2.Message],
    policy: tenant_policy_pb2.TenantPolicy,
    *,
    request_id: str,
    timeout: float,  # noqa: ASYNC109 - a gRPC call timeout, not an asyncio one
) -> ScreenedInput:
    try:
        reply = await peers.moderation.stub.ScreenInput(
            moderation_service_pb2.ScreenInputRequest(
                texts=[m.content for m in messages], request_id=request_id, return_masked_values=True
            ),
            metadata=caller.auth_metadata(),
            timeout=timeout,
        )
    except grpc.aio.AioRpcError as error:
        if not is_down(error):
            raise relayed(error) from None
        allow = tenant_policy_pb2.MODERATION_DEGRADATION_ALLOW_UNSCREENED
        if policy.degradation.moderation_unavailable != allow:
            raise Unavailable(
                "Content screening is unavailable, and this tenant's policy does not allow unscreened "
                "answers. Please retry shortly.",
                reason="MODERATION_UNAVAILABLE",
                retry_after=1.0,
            ) from None
        return ScreenedInput(tuple(m.content for m in messages), {}, screened=False)
    if reply.decision == finding_pb2.DECISION_BLOCK:
        raise InputBlocked(reply.findings)
    return ScreenedInput(tuple(reply.sanitized_texts), dict(reply.masked_values), True, tuple(reply.findings))
