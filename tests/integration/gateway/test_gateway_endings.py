"""How a chat stopped from the outside is recorded: a caller's deadline that passes mid-answer or while the
budget hold waits, or before the first token (audited DEADLINE_EXCEEDED as the caller saw it, not CANCELLED or
METERING_UNAVAILABLE, and settled or released at once), and a caller who leaves as its idempotency key's claim
commits (the row freed, so that its retry runs instead of being refused
REQUEST_IN_PROGRESS until the row's lease ends)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from parapet.kit import timeouts
from services.gateway.idempotency import IdempotencyStore, Replay
from tests.integration.gateway.conftest import MODULE, Suite, inference_config, question
from tests.integration.gateway.test_gateway_chat import LONG
from tests.integration.gateway.test_gateway_speculation import held_budget, warmed_tenant

pytestmark = MODULE

DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


async def test_a_chat_whose_deadline_passes_mid_answer_is_audited_and_settled_at_once(suite: Suite) -> None:
    """The slow model streams for about 3 s; the caller gave the call 1.5 s. The finaliser ran in the call's
    context, deadline included, so its Settle went out with no time left and the settlement was queued in the
    outbox as if metering were down (and a hold to release stayed held until its TTL)."""
    tenant = await suite.tenant()
    answer = await suite.stream(tenant, question(LONG, model="slow"), seconds=1.5)
    assert answer.error is not None and answer.error.code == grpc.StatusCode.DEADLINE_EXCEEDED, answer.error
    assert answer.text  # the deadline passed mid-answer
    ledger = await _settled(suite, tenant.tenant_id)
    assert ledger[0][1] >= 1 and ledger[0][2], ledger
    audit = await suite.wait_rows(
        "SELECT status_code, error_reason, completion_tokens FROM audit.records "
        "WHERE tenant_id = :t AND kind = 'interaction'",
        t=tenant.tenant_id,
    )
    assert [tuple(a) for a in audit] == [(DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", ledger[0][1])]


async def test_a_deadline_that_passes_while_the_caller_is_not_reading_is_audited_deadline_exceeded(
    suite: Suite,
) -> None:
    """grpc cancels the handler at the deadline as it does when the caller leaves: a chat blocked writing to a
    caller that stopped reading was audited CANCELLED, while the caller got DEADLINE_EXCEEDED."""
    tenant = await suite.tenant()
    async with suite.stalled_stream(tenant, deadline=2.0) as call:
        assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # not reading on: the deadline passes
    ledger = await _settled(suite, tenant.tenant_id)
    assert ledger[0][0] > 1000 and ledger[0][2], ledger
    audit = await suite.wait_rows(
        "SELECT status_code, error_reason FROM audit.records WHERE tenant_id = :t AND kind = 'interaction'",
        t=tenant.tenant_id,
    )
    assert [tuple(a) for a in audit] == [(DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED")]


async def test_a_deadline_that_passes_before_the_first_token_bills_the_prompt_sent(
    suite: Suite, tmp_path: Path
) -> None:
    """The provider takes 3 s to its first token; the caller gave the call 1.5 s. Inference's stream, given
    the caller's deadline less 10 ms, ended first: the chat was taken for a failed model call and its hold
    released, though the provider had the prompt (a caller leaving at that moment is billed for it)."""
    config = inference_config(suite.upstream)
    config["models"].append(
        {**config["models"][0], "name": "hesitant", "upstream_model": "gpt-4o-mini;first_token_delay=3"}
    )
    config["models"][-1].pop("fallbacks", None)
    path = tmp_path / "inference.json"
    path.write_text(json.dumps(config))
    tenant = await suite.tenant()
    async with (
        suite.inference(inference_config_file=path) as address,
        suite.gateway(inference_address=address, gateway_job_workers_enabled=False) as chat,
    ):
        answer = await suite.stream(tenant, question(LONG, model="hesitant"), stub=chat, seconds=1.5)
        assert answer.error is not None and answer.error.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert answer.events == []
        ledger = await _settled(suite, tenant.tenant_id)
    prompt, completion, estimated = ledger[0]
    assert prompt > 60 and completion == 0 and estimated, ledger
    audit = await suite.wait_rows(
        "SELECT status_code, error_reason, model FROM audit.records WHERE tenant_id = :t "
        "AND kind = 'interaction'",
        t=tenant.tenant_id,
    )
    assert [tuple(a) for a in audit] == [(DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", "hesitant")]


async def test_a_chat_whose_deadline_passes_while_its_hold_waits_is_audited_deadline_exceeded(
    suite: Suite,
) -> None:
    """The budget counters are locked, so the hold waits past the caller's 1 s deadline. Reserve, given the
    caller's deadline less 10 ms, failed DEADLINE_EXCEEDED first and was taken for metering being down: the
    caller got UNAVAILABLE METERING_UNAVAILABLE ("retry shortly"), audited so, and under a PROCEED policy the
    chat would have gone on unmetered. Nothing is answered or billed."""
    tenant, warm = await warmed_tenant(suite, 1_000_000, soft_percent=80)
    async with held_budget(suite, tenant):
        answer = await suite.stream(tenant, question("too late", model="gpt"), seconds=1.0)
        await asyncio.sleep(0.3)  # the gateway hears of the deadline on its own time
    assert answer.error is not None and answer.error.code == grpc.StatusCode.DEADLINE_EXCEEDED, answer.error
    assert answer.events == []
    audit = await suite.wait_rows(
        "SELECT status_code, error_reason FROM audit.records WHERE tenant_id = :t AND kind = 'interaction' "
        "AND status_code <> 0",
        t=tenant.tenant_id,
    )
    assert [tuple(a) for a in audit] == [(DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED")]
    await asyncio.sleep(0.5)  # a settlement or a release would be in by now
    ledger = await suite.rows(
        "SELECT request_id FROM metering.usage_ledger WHERE tenant_id = :t", t=tenant.tenant_id
    )
    assert [r[0] for r in ledger] == [warm.summary.request_id]
    holds = await suite.rows(
        "SELECT state, release_reason FROM metering.reservations WHERE tenant_id = :t AND state <> 'settled'",
        t=tenant.tenant_id,
    )
    # The Reserve was cancelled with the call while it waited on the locked counters: no hold was taken, and
    # none is left held (before, the finaliser's Release ran out of time too).
    assert holds == [], holds


async def _settled(suite: Suite, tenant_id: str) -> list[tuple[int, int, bool]]:
    """The tenant's one ledger row (prompt, completion, estimated), settled by the finaliser itself: a
    settlement queued in the outbox means its Settle could not reach metering."""
    ledger = await suite.wait_rows(
        "SELECT prompt_tokens, completion_tokens, estimated FROM metering.usage_ledger WHERE tenant_id = :t",
        t=tenant_id,
    )
    assert len(ledger) == 1, ledger
    queued = await suite.scalar(
        "SELECT count(*) FROM gateway.outbox WHERE tenant_id = :t AND kind = 'settlement'", t=tenant_id
    )
    assert queued == 0, "the settlement was queued as if metering were down"
    return [tuple(row) for row in ledger]


async def test_a_caller_who_leaves_as_its_key_s_claim_commits_can_retry_at_once(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim's COMMIT went through, but the caller left before its answer reached the flow (held here for
    a second after the commit). The flow, cancelled, never learnt that it owned the row and nothing freed it:
    every retry was ABORTED REQUEST_IN_PROGRESS until the lease ended (the deadline + 5 s; 15 minutes
    without one). The claim now ends on its own and a row it took for a caller already gone is deleted."""
    tenant = await suite.tenant()
    key = f"late-answer-{uuid.uuid4().hex[:8]}"
    committed = asyncio.Event()
    claim = IdempotencyStore.claim

    async def slow_answer(self: IdempotencyStore, *args: Any, **kwargs: Any) -> Replay | None:
        replay = await claim(self, *args, **kwargs)
        if args[2] == key and not committed.is_set():
            committed.set()
            await asyncio.sleep(1.0)  # the commit's answer on its way back
        return replay

    monkeypatch.setattr(IdempotencyStore, "claim", slow_answer)
    request = question("claim me", model="gpt", idempotency_key=key)
    call = suite.chat.StreamChat(request, metadata=tenant.metadata(), timeout=60)
    reading = asyncio.ensure_future(call.read())
    await timeouts.within(10, committed.wait())
    call.cancel()  # the caller leaves while the committed claim's answer is under way
    await asyncio.gather(reading, return_exceptions=True)
    # Freed once the claim has ended (about 1 s), long before its lease (65 s here).
    assert await _until_no_row(suite, tenant.tenant_id, key, seconds=5) == []
    retry = await suite.stream(tenant, request)
    assert retry.error is None, retry.error
    assert retry.text == "You said: claim me"


async def _until_no_row(suite: Suite, tenant_id: str, key: str, *, seconds: float) -> list[object]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        rows = await suite.rows(
            "SELECT state FROM gateway.idempotency WHERE tenant_id = :t AND idempotency_key = :k",
            t=tenant_id,
            k=key,
        )
        if not rows or loop.time() > deadline:
            return [tuple(r) for r in rows]
        await asyncio.sleep(0.1)
