"""Each dependency down, under each degradation policy; budgets under concurrent chats; records that match."""

from __future__ import annotations

import asyncio

import grpc

from parapet.auth.v1 import tenant_policy_pb2
from parapet.gateway.v1 import chat_pb2
from parapet.inference.v1 import cache_pb2
from tests.integration.gateway.conftest import MODULE, Suite, dead_address, question

pytestmark = MODULE

P = tenant_policy_pb2


def degradation(**fields: int) -> P.TenantPolicy:
    return P.TenantPolicy(degradation=P.DegradationPolicy(**fields))  # type: ignore[arg-type]


async def test_retrieval_down_answers_without_context_or_refuses(suite: Suite) -> None:
    lenient = await suite.tenant()
    strict = await suite.tenant(degradation(retrieval_unavailable=P.RETRIEVAL_DEGRADATION_REFUSE))
    async with suite.gateway(retrieval_address=dead_address()) as chat:
        answer = await suite.stream(
            lenient, question("grounded?", model="gpt", retrieval={"mode": 1}), stub=chat
        )
        assert answer.error is None, answer.error
        assert len(answer.notices(chat_pb2.NOTICE_TYPE_RETRIEVAL_DEGRADED)) == 1
        assert answer.text == "You said: grounded?"
        required = await suite.stream(
            lenient, question("grounded?", model="gpt", retrieval={"mode": 3}), stub=chat
        )
        refused = await suite.stream(
            strict, question("grounded?", model="gpt", retrieval={"mode": 1}), stub=chat
        )
    for failed in (required, refused):
        assert failed.error is not None and failed.error.code == grpc.StatusCode.UNAVAILABLE
        assert failed.error.reason == "RETRIEVAL_UNAVAILABLE" and failed.error.retry_after is not None


async def test_moderation_down_fails_closed_unless_the_policy_allows(suite: Suite) -> None:
    closed = await suite.tenant()
    open_ = await suite.tenant(degradation(moderation_unavailable=P.MODERATION_DEGRADATION_ALLOW_UNSCREENED))
    async with suite.gateway(moderation_address=dead_address()) as chat:
        refused = await suite.stream(closed, question("screen me", model="gpt"), stub=chat)
        allowed = await suite.stream(open_, question("screen me", model="gpt"), stub=chat)
        leaky = await suite.stream(open_, question("what is on file?", model="leaky"), stub=chat)
    assert refused.error is not None and refused.error.code == grpc.StatusCode.UNAVAILABLE
    assert refused.error.reason == "MODERATION_UNAVAILABLE"
    assert allowed.error is None, allowed.error
    assert allowed.text == "You said: screen me"
    assert len(allowed.notices(chat_pb2.NOTICE_TYPE_MODERATION_DEGRADED)) == 1
    # The question went unscreened, the answer did not: output screening runs in the gateway itself.
    assert leaky.error is None, leaky.error
    assert "[REDACTED:CREDIT_CARD]" in leaky.text and "4111" not in leaky.text


async def test_metering_down_refuses_budgeted_tenants_and_settles_the_others_later(suite: Suite) -> None:
    budget = P.Budget(
        budget_id="daily",
        scope=P.BUDGET_SCOPE_TENANT,
        window=P.BUDGET_WINDOW_DAY,
        token_limit=1_000_000,
    )
    budgeted = await suite.tenant(P.TenantPolicy(budgets=[budget]))
    free = await suite.tenant()
    async with suite.gateway(metering_address=dead_address()) as chat:
        refused = await suite.stream(budgeted, question("count me", model="gpt"), stub=chat)
        answered = await suite.stream(free, question("count me", model="gpt"), stub=chat)
        assert refused.error is not None and refused.error.reason == "METERING_UNAVAILABLE"
        assert answered.error is None, answered.error
        # Queued in the outbox, not settled directly. Whether it is still unsent is a race: the suite's main
        # gateway relays the same table to a metering it can reach (sent rows stay for a day).
        queued = await suite.wait_rows(
            "SELECT kind FROM gateway.outbox WHERE tenant_id = :t", t=free.tenant_id
        )
        assert [q[0] for q in queued] == ["settlement"]
    # The main gateway's relay (same outbox table, metering reachable) settles it without a reservation.
    ledger = await suite.wait_rows(
        "SELECT request_id, completion_tokens FROM metering.usage_ledger WHERE tenant_id = :t",
        t=free.tenant_id,
        seconds=15,
    )
    assert [tuple(r) for r in ledger] == [
        (answered.summary.request_id, answered.summary.usage.completion_tokens)
    ]
    # The delivered row keeps no content: neither the settlement nor the caller's token stays for its day.
    sent = await suite.wait_rows(
        "SELECT octet_length(payload), token FROM gateway.outbox WHERE tenant_id = :t AND sent_time IS NOT NULL",
        t=free.tenant_id,
    )
    assert [tuple(r) for r in sent] == [(0, "")]


async def test_concurrent_chats_never_overspend_by_more_than_one_reservation(suite: Suite) -> None:
    limit = 30_000
    tenant = await suite.tenant(
        P.TenantPolicy(
            budgets=[
                P.Budget(
                    budget_id="tight",
                    scope=P.BUDGET_SCOPE_TENANT,
                    window=P.BUDGET_WINDOW_DAY,
                    token_limit=limit,
                    soft_limit_percent=50,
                )
            ]
        )
    )
    # Each request reserves its prompt estimate plus the model's max_tokens and uses ~20. The slow model
    # (~1 s per answer) keeps every reservation open at once, as a burst against a real provider would:
    # with the zero-latency one, early chats settled before later ones reserved and nothing was refused.
    answers = await asyncio.gather(
        *(suite.stream(tenant, question(f"spend {i}", model="slow")) for i in range(40))
    )
    ok = [a for a in answers if a.error is None]
    refused = [a for a in answers if a.error is not None]
    assert ok and refused
    assert {a.error.reason for a in refused if a.error} == {"BUDGET_EXCEEDED"}
    assert all(a.error is not None and a.error.quota_failure is not None for a in refused)
    assert any(a.notices(chat_pb2.NOTICE_TYPE_BUDGET_SOFT_LIMIT) for a in ok)
    # Billing records exactly what was answered, and so does the audit log.
    ledger = await suite.wait_rows(
        "SELECT request_id, prompt_tokens + completion_tokens, cost_micros FROM metering.usage_ledger "
        "WHERE tenant_id = :t",
        t=tenant.tenant_id,
        count=len(ok),
    )
    answered = {a.summary.request_id: a.summary for a in ok}
    assert {r[0] for r in ledger} == set(answered)
    for request_id, tokens, cost in ledger:
        usage = answered[request_id].usage
        assert tokens == usage.prompt_tokens + usage.completion_tokens
        assert cost == answered[request_id].cost.amount_micros
    assert sum(r[1] for r in ledger) <= limit
    audit = await suite.wait_rows(
        "SELECT request_id, status_code FROM audit.records WHERE tenant_id = :t AND kind = 'interaction'",
        t=tenant.tenant_id,
        count=len(answers),
    )
    assert {r[0] for r in audit if r[1] == 0} == set(answered)
    assert sum(1 for r in audit if r[1] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]) == len(refused)


async def test_every_provider_down_serves_a_cached_answer_to_a_similar_question(suite: Suite) -> None:
    tenant = await suite.tenant()
    # Inference with its semantic cache on (the suite's own has it off), and a gateway in front of it.
    async with (
        suite.inference(cache_enabled=True) as inference_address,
        suite.gateway(inference_address=inference_address, gateway_job_workers_enabled=False) as chat,
    ):
        first = await suite.stream(tenant, question("How do I reset my password?", model="gpt"), stub=chat)
        assert first.error is None, first.error
        await suite.wait_rows(
            "SELECT entry_id FROM inference.cache_entries WHERE tenant_id = :t", t=tenant.tenant_id
        )
        suite.upstream.outages.update({"gpt-4o-mini", "claude-haiku-4-5"})  # gpt and its fallback, claude
        try:
            # ~0.91 similar: not a normal cache hit (0.95), close enough when no provider can answer (0.85).
            close = "Can you explain how to reset the password of my account?"
            served = await suite.stream(tenant, question(close, model="gpt"), stub=chat)
            unrelated = await suite.stream(
                tenant, question("How do I reset my username?", model="gpt"), stub=chat
            )
        finally:
            suite.upstream.outages.clear()
    assert served.error is None, served.error
    assert served.text == first.text
    [notice] = served.notices(chat_pb2.NOTICE_TYPE_CACHED_ANSWER_SERVED)
    assert "similar earlier question" in notice.message
    assert not served.notices(chat_pb2.NOTICE_TYPE_FALLBACK_USED)
    assert served.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_FALLBACK_HIT
    assert served.summary.cost.amount_micros == 0
    assert [a.model for a in served.summary.routing.fallback_attempts] == ["gpt", "claude"]
    assert unrelated.error is not None and unrelated.error.reason == "ALL_PROVIDERS_UNAVAILABLE"
    assert unrelated.error.code == grpc.StatusCode.UNAVAILABLE and unrelated.error.retry_after
    assert "no cached answer fits" in unrelated.error.message
    # Settled at no cost and audited as a cached answer, like any other chat.
    ledger = await suite.wait_rows(
        "SELECT request_id, cost_micros, cached FROM metering.usage_ledger WHERE tenant_id = :t",
        t=tenant.tenant_id,
        count=2,
    )
    assert (served.summary.request_id, 0, True) in [tuple(r) for r in ledger]
    audited = await suite.wait_rows(
        "SELECT request_id, cached FROM audit.records WHERE tenant_id = :t AND kind = 'interaction'",
        t=tenant.tenant_id,
        count=3,
    )
    assert (served.summary.request_id, True) in [tuple(r) for r in audited]
