"""Defects found reviewing the governed chat flow, each reproduced through the whole suite: a long question
refused by a limit of retrieval's, a stored grounded answer replayed to a key that may not read documents, a
max_tokens above every model's limit reserved whole, a caller who stopped reading billed nothing, and a
dependency without an address refused past the tenant's degradation policy."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack

import grpc
import grpc.aio

from parapet.auth.v1 import tenant_policy_pb2
from parapet.gateway.v1 import chat_pb2
from parapet.kit.timeouts import wait_event
from tests.integration.auth.conftest import create_key
from tests.integration.gateway.conftest import MODULE, Suite, Tenant, question
from tests.integration.gateway.test_gateway_chat import LONG

pytestmark = MODULE

FALCON = {
    "falcon-manual": (
        "Falcon manual",
        "The Falcon router reboots when the blue button is held for ten seconds.",
    )
}


async def test_a_long_question_is_grounded_not_refused_with_a_field_the_request_does_not_have(
    suite: Suite,
) -> None:
    """A question may be 200,000 characters, but retrieval searches with at most 8,192: before, a longer last
    message with retrieval on (the default) was INVALID_ARGUMENT naming `query`, a field no chat request has."""
    tenant = await suite.tenant()
    await suite.ingest(tenant.tenant_id, FALCON)
    long_question = "How do I reboot the Falcon router? " + "Please explain it in detail. " * 400
    assert len(long_question) > 8192
    answer = await suite.stream(tenant, question(long_question, model="local", retrieval={"mode": 1}))
    assert answer.error is None, answer.error
    assert [c.document_id for c in answer.citations] == ["falcon-manual"]


async def test_a_stored_grounded_answer_is_not_replayed_to_a_key_that_may_not_read_documents(
    suite: Suite,
) -> None:
    """A chat-only key of the same user running the chat would be refused by retrieval (documents.read); the
    replay of the answer the user's full key stored handed it the citations and the grounded text."""
    alice = await suite.tenant()
    await suite.ingest(alice.tenant_id, FALCON)
    request = question(
        "How do I reboot the Falcon router?",
        model="local",
        retrieval={"mode": 1},
        idempotency_key=f"grounded-{uuid.uuid4().hex[:6]}",
    )
    first = await suite.stream(alice, request)
    assert first.error is None and first.citations, first.error
    await suite.wait_rows(
        "SELECT 1 FROM gateway.idempotency WHERE tenant_id = :t AND state = 'done'", t=alice.tenant_id
    )
    key_id, secret = await create_key(suite.admin, suite.operator, alice.tenant_id, "alice", scopes=("chat",))
    chat_only = Tenant(alice.tenant_id, "alice", secret, key_id)
    fresh = await suite.stream(
        chat_only, question("How do I reboot the Falcon router?", model="local", retrieval={"mode": 1})
    )
    assert fresh.error is not None and fresh.error.code == grpc.StatusCode.PERMISSION_DENIED  # as retrieval
    replayed = await suite.stream(chat_only, request)
    assert replayed.events == []
    assert replayed.error is not None and replayed.error.code == grpc.StatusCode.PERMISSION_DENIED
    assert replayed.error.error_info is not None
    assert replayed.error.error_info.metadata["permission"] == "documents.read"
    again = await suite.stream(alice, request)  # the full key still gets the replay
    assert again.error is None and again.summary.request_id == first.summary.request_id
    # Both refusals are audited like any refused chat; the replay is not a chat of its own.
    audit = await suite.wait_rows(
        "SELECT status_code FROM audit.records WHERE tenant_id = :t AND kind = 'interaction'",
        t=alice.tenant_id,
        count=3,
    )
    denied = grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert sorted(r[0] for r in audit) == [0, denied, denied]


async def test_a_max_tokens_above_every_model_s_limit_reserves_only_what_a_model_can_write(
    suite: Suite,
) -> None:
    """Inference caps max_tokens at the model's own output limit (4,096 here), but the gateway reserved the
    caller's figure: a chat asking for 100,000 was refused BUDGET_EXCEEDED by a 20,000-token budget with
    nothing spent, although no model it may run on could write more than 4,096."""
    budget = tenant_policy_pb2.Budget(
        budget_id="small",
        scope=tenant_policy_pb2.BUDGET_SCOPE_TENANT,
        window=tenant_policy_pb2.BUDGET_WINDOW_DAY,
        token_limit=20_000,
    )
    tenant = await suite.tenant(tenant_policy_pb2.TenantPolicy(budgets=[budget]))
    answer = await suite.stream(
        tenant, question("a short question", model="gpt", generation={"max_tokens": 100_000})
    )
    assert answer.error is None, answer.error
    assert answer.text == "You said: a short question"
    reserved = await suite.scalar(
        "SELECT reserved_tokens FROM metering.reservations WHERE tenant_id = :t", t=tenant.tenant_id
    )
    assert reserved is not None and reserved <= 4096 + 1000


async def test_a_caller_who_stops_reading_then_leaves_is_settled_for_what_was_produced(suite: Suite) -> None:
    """grpc.aio cancels a streaming handler wherever it waits: while it waits for inference the flow sees
    CancelledError, but while it waits to write (a caller who stopped reading fills the flow-control window)
    the handler's generators are left to be closed later, and the flow's own ended first: its finaliser
    settled and audited the chat before the inner generator had counted what the model wrote, so a chat
    that streamed tens of kilobytes was billed zero tokens."""
    tenant = await suite.tenant()
    async with suite.stalled_stream(tenant, deadline=30) as call:
        await asyncio.sleep(1.5)  # not reading: the gateway's writes fill the window and wait
        call.cancel()
    ledger = await suite.wait_rows(
        "SELECT prompt_tokens, completion_tokens, estimated FROM metering.usage_ledger WHERE tenant_id = :t",
        t=tenant.tenant_id,
    )
    assert len(ledger) == 1
    prompt, completion, estimated = ledger[0]
    assert estimated and prompt > 1000 and completion > 0, ledger[0]
    audit = await suite.wait_rows(
        "SELECT status_code, prompt_tokens, completion_tokens FROM audit.records "
        "WHERE tenant_id = :t AND kind = 'interaction'",
        t=tenant.tenant_id,
    )
    assert [tuple(a) for a in audit] == [(grpc.StatusCode.CANCELLED.value[0], prompt, completion)]


async def test_inference_stopping_mid_answer_ends_the_chat_with_a_summary_and_a_status(suite: Suite) -> None:
    """Not a defect found, a path checked: inference stopping under a streaming chat (a rolling restart past
    its grace). The caller gets the text so far, a summary, then UNAVAILABLE at once, not at its deadline."""
    tenant = await suite.tenant()
    loop = asyncio.get_running_loop()
    inference = AsyncExitStack()
    address = await inference.enter_async_context(suite.inference())
    try:
        async with suite.gateway(inference_address=address, gateway_job_workers_enabled=False) as chat:
            streaming = asyncio.Event()
            pending = asyncio.ensure_future(
                suite.stream(
                    tenant, question(LONG, model="slow"), stub=chat, seconds=20, first_delta=streaming
                )
            )
            # The answer is streaming (about 3 s in all). A fixed 0.6 s sleep once came before the first delta
            # on a loaded CI machine, and inference stopped before anything was answered.
            assert await wait_event(streaming, 15), "the answer never started"
            await inference.aclose()  # grace 1 s, then inference cancels the stream
            stopped = loop.time()
            answer = await pending
    finally:
        await inference.aclose()
    assert loop.time() - stopped < 5, "the caller waited for its deadline"
    assert answer.error is not None and answer.error.code == grpc.StatusCode.UNAVAILABLE, answer.error
    assert answer.text and answer.summary is not None  # what was answered, then the summary, then the status


async def test_a_dependency_without_an_address_is_down_under_the_tenant_s_degradation_policy(
    suite: Suite,
) -> None:
    """A gateway deployed without a retrieval (or moderation) address answers as if that service were down,
    UNAVAILABLE naming the setting; but the degradation policy only looked at failed calls, so the default
    policy's answer without context (and a tenant's ALLOW_UNSCREENED) were refused outright."""
    lenient = await suite.tenant(
        tenant_policy_pb2.TenantPolicy(
            degradation=tenant_policy_pb2.DegradationPolicy(
                moderation_unavailable=tenant_policy_pb2.MODERATION_DEGRADATION_ALLOW_UNSCREENED
            )
        )
    )
    strict = await suite.tenant()
    async with suite.gateway(
        retrieval_address=None, moderation_address=None, gateway_job_workers_enabled=False
    ) as chat:
        answer = await suite.stream(
            lenient, question("grounded?", model="gpt", retrieval={"mode": 1}), stub=chat
        )
        refused = await suite.stream(strict, question("screen me", model="gpt"), stub=chat)
    assert answer.error is None, answer.error
    assert answer.text == "You said: grounded?"
    assert len(answer.notices(chat_pb2.NOTICE_TYPE_RETRIEVAL_DEGRADED)) == 1
    assert len(answer.notices(chat_pb2.NOTICE_TYPE_MODERATION_DEGRADED)) == 1
    assert refused.error is not None and refused.error.code == grpc.StatusCode.UNAVAILABLE
    assert refused.error.reason == "MODERATION_UNAVAILABLE" and refused.error.retry_after is not None


async def test_a_stored_grounded_answer_is_not_replayed_after_the_user_s_groups_changed(suite: Suite) -> None:
    """The answer was grounded in what the caller's groups could read. Replayed by its key after the user left
    the group, it handed back the citations and text of documents they may no longer read, for the key's whole
    lifetime; the same key under other groups is now another request."""
    from google.protobuf import field_mask_pb2

    from parapet.auth.v1 import tenant_admin_service_pb2, user_pb2

    tenant = await suite.tenant(groups=("hr",))
    await suite.ingest(
        tenant.tenant_id,
        {"salaries": ("Salary bands", "The engineering salary bands are reviewed every March.")},
        groups=("hr",),
    )
    ask = question(
        "When are the salary bands reviewed?",
        model="local",
        retrieval={"mode": 1, "top_k": 2},
        idempotency_key=f"k-{uuid.uuid4().hex[:8]}",
    )
    first = await suite.stream(tenant, ask)
    assert first.error is None and first.citations, first.error
    for _ in range(50):  # the answer is stored just after its summary went out
        replay = await suite.stream(tenant, ask)
        if replay.error is None or replay.error.error_info is None:
            break
        assert replay.error.error_info.reason == "REQUEST_IN_PROGRESS", replay.error
        await asyncio.sleep(0.1)
    assert replay.error is None and replay.summary.request_id == first.summary.request_id  # a replay

    await suite.admin.UpdateUser(
        tenant_admin_service_pb2.UpdateUserRequest(
            tenant_id=tenant.tenant_id,
            user=user_pb2.User(user_id=tenant.user_id, groups=["sales"]),
            update_mask=field_mask_pb2.FieldMask(paths=["groups"]),
        ),
        metadata=suite.operator,
    )
    for _ in range(50):  # the gateway's identity cache hears of the change from auth
        later = await suite.stream(tenant, ask)
        if later.error is not None:
            break
        assert later.summary.request_id == first.summary.request_id
        await asyncio.sleep(0.1)
    assert later.error is not None and later.error.code == grpc.StatusCode.ALREADY_EXISTS, later.error
    assert later.error.error_info is not None and later.error.error_info.reason == "IDEMPOTENCY_KEY_REUSED"
    assert later.citations == [] and later.text == ""
