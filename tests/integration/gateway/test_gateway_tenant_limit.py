"""A tenant's concurrent chats on one gateway replica are bounded (``PARAPET_GATEWAY_TENANT_MAX_CONCURRENT_CHATS``):
past the limit a chat is refused at once with RESOURCE_EXHAUSTED ``TENANT_CONCURRENCY_LIMIT``, its QuotaFailure and
RetryInfo, before anything is screened, held or billed; other tenants are not affected, and a slot freed by a
chat that ended (or whose caller left) is taken again. Until 2026-12-06 nothing bounded how many chats one tenant
held open, so one tenant's burst could take a replica from every other."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio

from parapet.kit.errors import error_details
from tests.integration.gateway.conftest import MODULE, Suite, question, unary_question

pytestmark = MODULE

LIMIT = 2
# The slow model streams one word per 50 ms: 100 words keep a chat open for about 5 s.
LONG = " ".join(f"word{n}" for n in range(100))


async def test_a_tenant_past_its_concurrent_chats_is_refused_and_others_are_not(suite: Suite) -> None:
    tenant, other = await suite.tenant(), await suite.tenant()
    async with suite.gateway(gateway_tenant_max_concurrent_chats=LIMIT) as chat:
        started = [asyncio.Event() for _ in range(LIMIT)]
        open_chats = [
            asyncio.create_task(
                suite.stream(tenant, question(LONG, model="slow"), stub=chat, first_delta=event)
            )
            for event in started
        ]
        await asyncio.gather(*(event.wait() for event in started))
        refused = await suite.stream(tenant, question("one more", model="gpt"), stub=chat)
        unary_refused = None
        try:
            await chat.Chat(
                unary_question("and a unary one", model="gpt"),
                metadata=tenant.metadata(),
                timeout=30,
            )
        except grpc.aio.AioRpcError as error:
            unary_refused = error_details(error)
        # Another tenant chats on the same replica meanwhile.
        beside = await suite.stream(other, question("hello from another tenant", model="gpt"), stub=chat)
        # One of the open chats' callers leaves: its slot is free again.
        open_chats[0].cancel()
        await asyncio.gather(open_chats[0], return_exceptions=True)
        again = await suite.stream(tenant, question("now there is room", model="gpt"), stub=chat)
        finished = await open_chats[1]

    assert refused.error is not None and refused.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.error.reason == "TENANT_CONCURRENCY_LIMIT" and refused.events == []
    assert refused.error.retry_after is not None and refused.error.retry_after > 0
    assert refused.error.quota_failure is not None
    assert [v.subject for v in refused.error.quota_failure.violations] == [f"tenant:{tenant.tenant_id}"]
    assert unary_refused is not None and unary_refused.reason == "TENANT_CONCURRENCY_LIMIT"
    assert beside.error is None and beside.text == "You said: hello from another tenant"
    assert again.error is None and again.text == "You said: now there is room"
    assert finished.error is None and finished.text == f"You said: {LONG}"
    # Refused before the flow: neither provider nor metering saw the refused chats.
    assert not any("one more" in str(r.body) or "a unary one" in str(r.body) for r in suite.upstream.requests)
    ledger = await suite.wait_rows(
        "SELECT request_id FROM metering.usage_ledger WHERE tenant_id = :t", t=tenant.tenant_id, count=3
    )
    # The two long chats (one cut short) and the one after: nothing for the refused ones.
    assert len(ledger) == 3, ledger
