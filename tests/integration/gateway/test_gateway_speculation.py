"""The model call started beside the budget hold (services/gateway/headroom.py), against the real suite.

A test holds the tenant's budget counter rows with ``SELECT ... FOR UPDATE`` in its own transaction: metering's
Reserve statement then waits on those row locks exactly as it would behind a concurrent chat, so the hold
stays pending for as long as the test wants while everything else runs for real.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.auth.v1 import tenant_policy_pb2 as P
from parapet.gateway.v1 import chat_pb2
from parapet.kit.errors import ErrorDetails, error_details
from tests.integration.gateway.conftest import MODULE, Answer, Suite, Tenant, question
from tests.integration.observability.scrape import scrape, until

pytestmark = MODULE

SPECULATIVE = "parapet_gateway_speculative_calls_total"


def budgeted(limit: int, soft_percent: int) -> P.TenantPolicy:
    budget = P.Budget(
        budget_id="daily",
        scope=P.BUDGET_SCOPE_TENANT,
        window=P.BUDGET_WINDOW_DAY,
        token_limit=limit,
        soft_limit_percent=soft_percent,
    )
    return P.TenantPolicy(budgets=[budget])


@asynccontextmanager
async def held_budget(suite: Suite, tenant: Tenant) -> AsyncIterator[AsyncSession]:
    """The tenant's budget counters locked until the block ends (then committed, with whatever it changed)."""
    async with suite.database.transaction() as session:
        locked = await session.execute(
            text("SELECT 1 FROM metering.budget_counters WHERE tenant_id = :t FOR UPDATE"),
            {"t": tenant.tenant_id},
        )
        assert locked.all(), "no budget counter yet: a chat must have been reserved first"
        yield session


class Reader:
    """A StreamChat whose events are collected as they arrive, so a test can look while it runs."""

    def __init__(self, suite: Suite, tenant: Tenant, words: str) -> None:
        self.answer = Answer()
        self._call = suite.chat.StreamChat(
            question(words, model="gpt"), metadata=tenant.metadata(), timeout=30
        )
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for event in self._call:
                self.answer.events.append(event)
        except grpc.aio.AioRpcError as error:
            self.answer.error = error_details(error)
        except asyncio.CancelledError:
            self.answer.error = None  # cancelled by the test, as a caller that leaves

    def cancel(self) -> None:
        self._call.cancel()

    async def result(self) -> Answer:
        await self._task
        return self.answer


async def upstream_saw(suite: Suite, marker: str, seconds: float) -> bool:
    """Whether a request whose body holds ``marker`` reached the model provider within ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if any(marker in json.dumps(r.body) for r in suite.upstream.requests):
            return True
        await asyncio.sleep(0.02)
    return False


async def speculative(suite: Suite, outcome: str) -> float:
    return (await scrape(suite.metrics_port)).value(SPECULATIVE, outcome=outcome)


async def audited_unbilled(suite: Suite, tenant: Tenant, reason: str, *, billed: Answer) -> None:
    """The tenant's one failed chat is audited with ``reason`` and names the model its prompt was sent to
    (the provider saw it), and the ledger holds only ``billed``: the speculated call cost the tenant nothing."""
    audit = await suite.wait_rows(
        "SELECT model, error_reason FROM audit.records WHERE tenant_id = :t AND kind = 'interaction' "
        "AND status_code <> 0",
        t=tenant.tenant_id,
    )
    assert [(a[1], a[0] in ("gpt", "claude")) for a in audit] == [(reason, True)], audit
    await asyncio.sleep(0.5)  # the finaliser ran with the audit record; a settlement would be in by now
    ledger = await suite.rows(
        "SELECT request_id FROM metering.usage_ledger WHERE tenant_id = :t", t=tenant.tenant_id
    )
    assert [r[0] for r in ledger] == [billed.summary.request_id]


async def warmed_tenant(suite: Suite, limit: int, soft_percent: int) -> tuple[Tenant, Answer]:
    """A tenant with a daily token budget, and its first chat (answered): its budget counters now exist,
    and the gateway has seen its first hold (granted with or without a warning, as the budget says)."""
    tenant = await suite.tenant(budgeted(limit, soft_percent))
    warm = await suite.stream(tenant, question("first of the day", model="gpt"))
    assert warm.error is None, warm.error
    return tenant, warm


def marker(kind: str) -> str:
    """A question no other test asks, so the upstream's record of it is this chat's."""
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def refused_for_budget(error: ErrorDetails | None) -> bool:
    return (
        error is not None
        and error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        and error.reason == "BUDGET_EXCEEDED"
    )


async def test_the_model_starts_beside_a_pending_hold_and_the_answer_waits_for_it(suite: Suite) -> None:
    # Granted without a warning: the next chat may speculate.
    tenant, _warm = await warmed_tenant(suite, 1_000_000, soft_percent=80)
    kept = await speculative(suite, "kept")

    words = marker("speculate")
    async with held_budget(suite, tenant):
        reader = Reader(suite, tenant, words)
        # The provider is asked while the hold still waits on the locked counters...
        assert await upstream_saw(suite, words, seconds=5)
        await asyncio.sleep(0.3)
        # ...and nothing of its answer reaches the caller before the hold is granted.
        assert reader.answer.events == [] and reader.answer.error is None
    answer = await reader.result()

    assert answer.error is None, answer.error
    assert answer.text == f"You said: {words}" and answer.summary is not None
    assert await speculative(suite, "kept") == kept + 1
    ledger = await suite.wait_rows(
        "SELECT request_id FROM metering.usage_ledger WHERE tenant_id = :t AND request_id = :r",
        t=tenant.tenant_id,
        r=answer.summary.request_id,
    )
    assert len(ledger) == 1  # settled like any chat


async def test_a_refused_hold_cancels_the_started_call_and_nothing_is_answered_or_billed(
    suite: Suite,
) -> None:
    tenant, warm = await warmed_tenant(suite, 1_000_000, soft_percent=80)
    refused_before = await speculative(suite, "refused")

    words = marker("refused")
    async with held_budget(suite, tenant) as session:
        reader = Reader(suite, tenant, words)
        assert await upstream_saw(suite, words, seconds=5)
        # Another replica spent the rest of the budget meanwhile: the pending hold will be refused.
        await session.execute(
            text("UPDATE metering.budget_counters SET used = limit_value WHERE tenant_id = :t"),
            {"t": tenant.tenant_id},
        )
    answer = await reader.result()

    assert refused_for_budget(answer.error), answer.error
    assert answer.events == []  # no text, no notice, no summary: the call was cancelled unseen
    assert await speculative(suite, "refused") == refused_before + 1
    await audited_unbilled(suite, tenant, "BUDGET_EXCEEDED", billed=warm)

    # After a refusal the caller's chats wait for their hold again: the provider is not asked meanwhile.
    words = marker("waits")
    async with held_budget(suite, tenant):
        reader = Reader(suite, tenant, words)
        assert not await upstream_saw(suite, words, seconds=0.5)
    answer = await reader.result()
    assert refused_for_budget(answer.error), answer.error
    assert not await upstream_saw(suite, words, seconds=0.1)


async def test_a_soft_limit_warning_makes_the_next_chat_wait_for_its_hold(suite: Suite) -> None:
    # One reservation (the prompt and the default 1,024 output tokens) is over 1% of 50,000 tokens.
    tenant, warm = await warmed_tenant(suite, 50_000, soft_percent=1)
    assert warm.notices(chat_pb2.NOTICE_TYPE_BUDGET_SOFT_LIMIT)
    counts = [await speculative(suite, outcome) for outcome in ("kept", "refused", "cancelled")]

    words = marker("warned")
    async with held_budget(suite, tenant):
        reader = Reader(suite, tenant, words)
        assert not await upstream_saw(suite, words, seconds=0.5)
    answer = await reader.result()

    assert answer.error is None, answer.error
    assert answer.text == f"You said: {words}"
    kinds = [e.WhichOneof("event") for e in answer.events]
    assert kinds.index("notice") < kinds.index("text_delta")  # the warning still comes first
    assert [await speculative(suite, outcome) for outcome in ("kept", "refused", "cancelled")] == counts


async def test_a_caller_who_leaves_during_the_hold_stops_the_started_call_and_is_not_billed(
    suite: Suite,
) -> None:
    tenant, warm = await warmed_tenant(suite, 1_000_000, soft_percent=80)
    cancelled_before = await speculative(suite, "cancelled")

    words = marker("leaves")
    async with held_budget(suite, tenant):
        reader = Reader(suite, tenant, words)
        assert await upstream_saw(suite, words, seconds=3)
        reader.cancel()
        answer = await reader.result()
        assert answer.events == []
        # The gateway learns of the cancellation on its own time: wait for the count, inside the hold.
        await until(
            lambda: scrape(suite.metrics_port),
            lambda samples: samples.value(SPECULATIVE, outcome="cancelled") == cancelled_before + 1,
            within=5,
        )
    await audited_unbilled(suite, tenant, "CANCELLED", billed=warm)
    # The hold metering granted once the counters were free is released, not left to count against the
    # budget until its TTL (300 s): the caller left before it was granted, and nobody else would end it.
    holds = await suite.wait_rows(
        "SELECT state, release_reason FROM metering.reservations WHERE tenant_id = :t AND state <> 'settled'",
        t=tenant.tenant_id,
    )
    assert [tuple(h) for h in holds] == [("released", "CANCELLED")], holds
