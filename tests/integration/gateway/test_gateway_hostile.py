"""Hostile chats through the whole flow (real auth, moderation, metering, retrieval, inference, audit): each
field of an otherwise valid request made hostile in turn. Whatever the gateway and the services behind it
answer, it is a typed status with ErrorInfo, never INTERNAL or UNKNOWN, and a chat it answers is audited."""

from __future__ import annotations

from parapet.gateway.v1 import chat_service_pb2
from tests.hostile import crash, hostile_requests
from tests.integration.gateway.conftest import MODULE, Suite, question

pytestmark = MODULE


async def test_each_hostile_field_of_a_chat_gets_a_typed_answer(suite: Suite) -> None:
    tenant = await suite.tenant()
    base = question("What is the leave policy?", model="gpt")
    crashed: list[str] = []
    answered = 0
    for what, request in hostile_requests(chat_service_pb2.StreamChatRequest, base):
        answer = await suite.stream(tenant, request)
        if answer.error is None:
            answered += 1
            assert answer.summary is not None, what
        elif (why := crash(answer.error)) is not None:
            crashed.append(f"{what}: {why}")
    assert crashed == []
    assert answered > 0  # some fields' hostile values are valid input: those chats went all the way
    audited = await suite.wait_rows(
        "SELECT count(*) FROM audit.records WHERE tenant_id = :t AND kind = 'interaction' HAVING count(*) >= :n",
        t=tenant.tenant_id,
        n=answered,
    )
    assert audited and audited[0][0] >= answered
