"""What a chat leaves behind, whatever happened to it: a stored answer replayed only to a caller still allowed to
chat, the settlement and the audit record even when the idempotency row cannot be written, and a cancelled
chat billed for the prompt it sent rather than for its reservation's bound."""

from __future__ import annotations

import uuid

import grpc
from sqlalchemy import text

from tests.integration.auth.conftest import create_key
from tests.integration.gateway.conftest import MODULE, Suite, Tenant, question
from tests.integration.gateway.test_gateway_chat import LONG

pytestmark = MODULE


async def test_a_stored_answer_is_replayed_only_to_a_credential_still_allowed_to_chat(suite: Suite) -> None:
    """A key is the user's, not the credential's: before, a narrower key of the same user (or the user after
    losing the chat permission) was handed the stored answer, citations included, without being authorized."""
    alice = await suite.tenant()
    request = question("say it once", model="gpt", idempotency_key=f"replay-{uuid.uuid4().hex[:6]}")
    first = await suite.stream(alice, request)
    assert first.error is None, first.error
    await suite.wait_rows(
        "SELECT 1 FROM gateway.idempotency WHERE tenant_id = :t AND state = 'done'", t=alice.tenant_id
    )
    key_id, secret = await create_key(
        suite.admin, suite.operator, alice.tenant_id, "alice", scopes=("documents.read",)
    )
    narrow = Tenant(alice.tenant_id, "alice", secret, key_id)
    refused = await suite.stream(narrow, request)
    assert refused.error is not None and refused.error.code == grpc.StatusCode.PERMISSION_DENIED, (
        refused.error
    )
    assert refused.events == []
    replayed = await suite.stream(alice, request)  # the key still replays to a credential that may chat
    assert replayed.error is None and replayed.summary.request_id == first.summary.request_id
    # The refusal is audited like any refused chat; the replay, like before, is not a chat of its own.
    audit = await suite.wait_rows(
        "SELECT status_code FROM audit.records WHERE tenant_id = :t AND kind = 'interaction'",
        t=alice.tenant_id,
        count=2,
    )
    assert sorted(r[0] for r in audit) == [0, grpc.StatusCode.PERMISSION_DENIED.value[0]]


async def test_a_failed_idempotency_write_still_settles_and_audits_the_chat(suite: Suite) -> None:
    """A real PostgreSQL failure of the stored answer's UPDATE (a trigger refusing this key's rows): before, the
    settlement and the audit record shared its fate and were lost although metering and NATS were up."""
    tenant = await suite.tenant()
    key = f"unstorable-{uuid.uuid4().hex[:8]}"
    function, trigger = f"refuse_{key.replace('-', '_')}", f"refuse_{key.replace('-', '_')}_trigger"
    async with suite.database.transaction() as session:
        await session.execute(
            text(
                f"CREATE FUNCTION gateway.{function}() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'this test refuses the row'; END $$"
            )
        )
        await session.execute(
            text(
                f"CREATE TRIGGER {trigger} BEFORE UPDATE ON gateway.idempotency FOR EACH ROW "
                f"WHEN (NEW.idempotency_key = '{key}') EXECUTE FUNCTION gateway.{function}()"
            )
        )
    try:
        answer = await suite.stream(tenant, question("keep my records", model="gpt", idempotency_key=key))
        assert answer.error is None, answer.error
        request_id = answer.summary.request_id
        ledger = await suite.wait_rows(
            "SELECT 1 FROM metering.usage_ledger WHERE tenant_id = :t AND request_id = :r",
            t=tenant.tenant_id,
            r=request_id,
        )
        audit = await suite.wait_rows(
            "SELECT 1 FROM audit.records WHERE tenant_id = :t AND request_id = :r",
            t=tenant.tenant_id,
            r=request_id,
        )
        assert len(ledger) == 1 and len(audit) == 1
        # The answer could not be stored: the row stays running until its lease ends, as after a crash.
        state = await suite.scalar(
            "SELECT state FROM gateway.idempotency WHERE tenant_id = :t AND idempotency_key = :k",
            t=tenant.tenant_id,
            k=key,
        )
        assert state == "running"
    finally:
        async with suite.database.transaction() as session:
            await session.execute(text(f"DROP TRIGGER {trigger} ON gateway.idempotency"))
            await session.execute(text(f"DROP FUNCTION gateway.{function}()"))


async def test_a_cancelled_chat_is_billed_for_the_prompt_it_sent_not_the_reservation_s_bound(
    suite: Suite,
) -> None:
    """The reservation holds the context at its largest (top_k chunks of 320 tokens) while retrieval runs; a
    stream that ends without inference's count was settled for that bound: about 15 times the prompt here,
    with no document retrieved at all. It is settled for the prompt inference announced before calling the
    provider: what the provider bills for it, template included (counted in the gateway, it fell short)."""
    tenant = await suite.tenant()  # no documents: retrieval finds nothing
    request = question(LONG, model="slow", retrieval={"mode": 1})
    full = await suite.stream(tenant, request)
    assert full.error is None and full.citations == [], full.error
    counted = full.summary.usage.prompt_tokens
    await suite.leave_after_first_delta(tenant, request)
    ledger = await suite.wait_rows(
        "SELECT prompt_tokens FROM metering.usage_ledger WHERE tenant_id = :t AND estimated",
        t=tenant.tenant_id,
    )
    assert len(ledger) == 1, ledger
    assert ledger[0][0] == counted
