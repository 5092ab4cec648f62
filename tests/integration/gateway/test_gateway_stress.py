"""Chats under stress and from hostile callers: a caller who stops reading and sets no deadline, a chat that
runs on past every bound, an answer whose audit record is larger than NATS takes, and storms of callers who
leave at every point of the flow. Whatever happens, each chat ends, its hold is settled or released, and it is
audited."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from typing import Any

import grpc
import grpc.aio

from parapet.audit.v1 import audit_record_pb2
from parapet.auth.v1 import tenant_policy_pb2
from parapet.kit.errors import ErrorDetails, error_details
from tests.integration.gateway.conftest import MODULE, Suite, question
from tests.integration.gateway.test_gateway_chat import LONG

pytestmark = MODULE

DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


async def test_a_caller_who_stops_reading_without_a_deadline_is_ended_settled_and_audited(
    suite: Suite,
) -> None:
    """The caller reads the first delta of a 180 kB answer, then nothing, and set no deadline; it answers the
    gateway's keepalive pings, so the connection looks alive. The gateway's handler waited on flow control for
    ever, holding the model call (inference and the provider's response stopped too, behind it), the budget
    hold (which metering expires after 5 minutes, after which the tenant's budget no longer counted the chat)
    and memory. Now a caller that accepts no message for PARAPET_GATEWAY_SEND_TIMEOUT_SECONDS is let go: the
    chat is settled for what was produced and audited DEADLINE_EXCEEDED `CALLER_NOT_READING`."""
    tenant = await suite.tenant()
    async with suite.stalled_stream(tenant, deadline=None, gateway_send_timeout_seconds=1.0) as call:
        ledger = await suite.wait_rows(
            "SELECT prompt_tokens, completion_tokens, estimated FROM metering.usage_ledger WHERE tenant_id = :t",
            t=tenant.tenant_id,
            seconds=8,
        )
        audit = await suite.wait_rows(
            "SELECT status_code, error_reason FROM audit.records WHERE tenant_id = :t AND kind = 'interaction'",
            t=tenant.tenant_id,
        )
        # Reading again, the caller gets what was in flight, then the status (no summary: none went out).
        events, error = await _read_to_the_end(call)
        assert not any(event.HasField("summary") for event in events)
        assert error is not None and error.code == grpc.StatusCode.DEADLINE_EXCEEDED, error
        assert error.reason == "CALLER_NOT_READING", error
    assert len(ledger) == 1 and ledger[0][0] > 1000 and ledger[0][1] > 0 and ledger[0][2], ledger
    assert [tuple(a) for a in audit] == [(DEADLINE_EXCEEDED, "CALLER_NOT_READING")]
    held = await suite.rows(
        "SELECT count(*) FROM metering.reservations WHERE tenant_id = :t AND state = 'active'",
        t=tenant.tenant_id,
    )
    assert held == [(0,)]


async def test_a_chat_without_a_deadline_ends_at_the_gateway_s_limit(suite: Suite) -> None:
    """A caller that sets no deadline gets the gateway's: PARAPET_GATEWAY_CHAT_MAX_SECONDS (by default the
    budget hold's lifetime, so no chat outlives its hold). The slow model streams for about 3 s; the limit here
    is 1.5 s. Before, nothing bounded a chat the caller kept reading slowly (inference's idle timeout counts
    only the waits for the provider)."""
    tenant = await suite.tenant()
    async with suite.gateway(gateway_chat_max_seconds=1.5, gateway_job_workers_enabled=False) as chat:
        answer = await suite.stream(tenant, question(LONG, model="slow"), stub=chat, seconds=None)
        assert answer.error is not None and answer.error.code == grpc.StatusCode.DEADLINE_EXCEEDED, (
            answer.error
        )
        ledger = await suite.wait_rows(
            "SELECT completion_tokens, estimated FROM metering.usage_ledger WHERE tenant_id = :t",
            t=tenant.tenant_id,
        )
    # Settled once, for what it produced by the limit (on a loaded machine, possibly no token yet).
    assert len(ledger) == 1, ledger
    assert not answer.text or ledger[0][0] >= 1, (ledger, answer.text)
    audit = await suite.wait_rows(
        "SELECT status_code, error_reason FROM audit.records WHERE tenant_id = :t AND kind = 'interaction'",
        t=tenant.tenant_id,
    )
    assert [tuple(a) for a in audit] == [(DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED")]


async def test_an_audit_record_larger_than_nats_takes_is_delivered_with_its_bodies_hashed(
    suite: Suite,
) -> None:
    """A valid chat of 150,000 accented letters, echoed back: its audit record (the prompt as JSON, which
    escapes each letter to six bytes, and the answer) is 1.2 MB, over NATS's 1 MB message limit. The publish
    failed, the record went to the outbox, and the relay retried it for ever: the chat was never audited. Now a
    record too large to publish keeps its bodies as hashes only (as the HASH_ONLY policy would)."""
    tenant = await suite.tenant()
    letters = "é" * 150_000
    answer = await suite.stream(tenant, question(letters, model="gpt"), seconds=60)
    assert answer.error is None, answer.error
    rows = await suite.wait_rows(
        "SELECT metadata, prompt IS NULL, response IS NULL FROM audit.records "
        "WHERE tenant_id = :t AND request_id = :r",
        t=tenant.tenant_id,
        r=answer.summary.request_id,
    )
    assert len(rows) == 1, "the chat was not audited"
    metadata, no_prompt, no_response = rows[0]
    assert no_prompt and no_response
    body = audit_record_pb2.AuditRecord.FromString(bytes(metadata)).interaction.body
    assert body.retention == tenant_policy_pb2.BODY_RETENTION_HASH_ONLY
    prompt = json.dumps([{"role": "ROLE_USER", "content": letters}])
    assert body.prompt_sha256 == hashlib.sha256(prompt.encode()).hexdigest()
    assert body.response_sha256 == hashlib.sha256(answer.text.encode()).hexdigest()
    queued = await suite.scalar(
        "SELECT count(*) FROM gateway.outbox WHERE tenant_id = :t AND sent_time IS NULL", t=tenant.tenant_id
    )
    assert queued == 0


async def test_a_storm_of_callers_leaving_at_every_point_leaks_no_hold_record_key_or_task(
    suite: Suite,
) -> None:
    """Sixty chats, twelve at a time, each cancelled by its caller after a delay drawn from 10 ms to 1.2 s:
    during authentication, screening, the budget hold, before the first token, mid-answer, after it. A third
    carry an idempotency key, half stream slowly. Afterwards no hold is left active, every hold and every ledger
    row belongs to an audited chat, no key is left `running` (its retry would be refused), and every
    finaliser has ended."""
    tenant = await suite.tenant()
    draw = random.Random(7)
    delays = [0.01, 0.03, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.8, 1.2]
    slots = asyncio.Semaphore(12)

    async def chat(index: int) -> None:
        request = question(
            f"{LONG} {index}",
            model="slow" if index % 2 else "gpt",
            idempotency_key=f"storm-{index}" if index % 3 == 0 else "",
        )
        delay = draw.choice(delays)
        async with slots:
            call = suite.chat.StreamChat(request, metadata=tenant.metadata(), timeout=30)
            reading = asyncio.ensure_future(_read_to_the_end(call))
            await asyncio.sleep(delay)
            call.cancel()
            await asyncio.gather(reading, return_exceptions=True)

    await asyncio.gather(*(chat(index) for index in range(60)))
    unaudited = (
        "SELECT count(*) FROM {table} x WHERE x.tenant_id = :t AND NOT EXISTS (SELECT 1 FROM audit.records a "
        "WHERE a.tenant_id = x.tenant_id AND a.request_id = x.request_id AND a.kind = 'interaction')"
    )
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 15
    while True:
        active = await suite.scalar(
            "SELECT count(*) FROM metering.reservations WHERE tenant_id = :t AND state = 'active'",
            t=tenant.tenant_id,
        )
        missing = [
            await suite.scalar(unaudited.format(table=table), t=tenant.tenant_id)
            for table in ("metering.reservations", "metering.usage_ledger")
        ]
        running = await suite.scalar(
            "SELECT count(*) FROM gateway.idempotency WHERE tenant_id = :t AND state = 'running'",
            t=tenant.tenant_id,
        )
        finalisers = [t for t in asyncio.all_tasks() if t.get_name().startswith(("finalise-", "free-claim-"))]
        if (active, missing, running, finalisers) == (0, [0, 0], 0, []) or loop.time() > give_up:
            break
        await asyncio.sleep(0.2)
    assert (active, missing, running, finalisers) == (0, [0, 0], 0, [])
    reserved = await suite.scalar(
        "SELECT count(*) FROM metering.reservations WHERE tenant_id = :t", t=tenant.tenant_id
    )
    assert reserved > 0  # the storm did reach the budget hold (how many depends on the machine's load)


async def _read_to_the_end(call: Any) -> tuple[list[Any], ErrorDetails | None]:
    events: list[Any] = []
    try:
        async for event in call:
            events.append(event)
    except grpc.aio.AioRpcError as error:
        return events, error_details(error)
    return events, None
