"""The gateway's own metrics, scraped over HTTP after real chats through the whole in-process suite (the
gateway integration suite: every service over real channels, PostgreSQL, NATS, the provider emulator).

The time Parapet added per chat equals what the summaries reported; chats are counted by how they ended and by
the dependency they went on without; the outbox gauge shows a settlement and an audit record that could not be
delivered at once, and the relay's delivered counter moves when they leave. The registry is the process's (the
main gateway's endpoint shows what a second gateway recorded too), so each check is a delta.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import grpc
import psycopg
import pytest
from sqlalchemy.engine import make_url

from parapet.auth.v1 import tenant_policy_pb2 as P
from parapet.embedded import EmbeddedNats
from parapet.gateway.v1 import chat_pb2, chat_service_pb2
from tests.integration.gateway.conftest import (
    MODULE,
    Suite,
    Tenant,
    dead_address,
    main_gateway_overrides,
    module_nats,
    module_nats_server,
    question,
    suite,
)
from tests.integration.observability.scrape import Samples, scrape, until

__all__ = [
    "main_gateway_overrides",
    "module_nats",
    "module_nats_server",
    "suite",
]  # the gateway suite's fixtures, for this module

pytestmark = MODULE

OVERHEAD = "parapet_gateway_overhead_seconds"
DEGRADED = "parapet_gateway_degraded_chats_total"
PENDING = "parapet_gateway_outbox_pending"
DELIVERED = "parapet_gateway_outbox_delivered_total"
# Streamed by the "slow" model one word per 50 ms: still streaming when the caller cancels.
LONG = " ".join(f"word{i}" for i in range(60))


@pytest.fixture(scope="module")
def database_url(database_url: str) -> Iterator[str]:
    """A database of this module's own on the session's server. Every gateway on a database shares one outbox,
    and a row another module left there (a settlement whose token this suite's metering cannot verify, an
    audit record its relay would publish) would move the counts; here the outbox holds this module's rows."""
    server = make_url(database_url)
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"gateway_metrics_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


class Deltas:
    """The series of a later scrape minus those of an earlier one."""

    def __init__(self, before: Samples, after: Samples) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: str) -> float:
        return self.after.value(name, **labels) - self.before.value(name, **labels)


def _seconds(summary: chat_pb2.ChatSummary) -> float:
    return float(summary.parapet_duration.ToNanoseconds()) / 1e9


async def _cancelled(suite: Suite, tenant: Tenant) -> None:
    """A streaming chat the caller cancels after its first delta."""
    call = suite.chat.StreamChat(question(LONG, model="slow"), metadata=tenant.metadata(), timeout=30)
    async for event in call:
        if event.HasField("text_delta"):
            break
    call.cancel()


async def test_added_time_results_and_degraded_chats_are_counted_once_per_chat(suite: Suite) -> None:
    tenant = await suite.tenant()
    lenient = await suite.tenant(
        P.TenantPolicy(
            degradation=P.DegradationPolicy(moderation_unavailable=P.MODERATION_DEGRADATION_ALLOW_UNSCREENED)
        )
    )

    async def read() -> Samples:
        return await scrape(suite.metrics_port)

    before = await read()
    streamed = await suite.stream(tenant, question("hello metrics", model="gpt"))
    unary = await suite.chat.Chat(
        chat_service_pb2.ChatRequest.FromString(question("unary metrics", model="gpt").SerializeToString()),
        metadata=tenant.metadata(),
        timeout=30,
    )
    failed = await suite.stream(tenant, question("anyone there?", model="down"))
    await _cancelled(suite, tenant)
    # Retrieval, moderation and metering all down: the lenient tenant is answered without each of them, and
    # the settlement waits in the outbox until the main gateway's relay (metering reachable) delivers it.
    async with suite.gateway(
        retrieval_address=dead_address(),
        moderation_address=dead_address(),
        metering_address=dead_address(),
        gateway_job_workers_enabled=False,
    ) as degraded_chat:
        degraded = await suite.stream(
            lenient, question("grounded?", model="gpt", retrieval={"mode": 1}), stub=degraded_chat
        )
    answered = [streamed.summary, unary.summary, degraded.summary]
    assert streamed.error is None and degraded.error is None, (streamed.error, degraded.error)
    assert failed.error is not None and failed.error.reason == "ALL_PROVIDERS_UNAVAILABLE"
    for kind in (chat_pb2.NOTICE_TYPE_RETRIEVAL_DEGRADED, chat_pb2.NOTICE_TYPE_MODERATION_DEGRADED):
        assert len(degraded.notices(kind)) == 1

    after = await until(
        read,
        lambda s: (
            Deltas(before, s)(f"{OVERHEAD}_count", result="cancelled") == 1
            and Deltas(before, s)(DELIVERED, kind="settlement") == 1
            and s.value(PENDING, kind="settlement") == 0
        ),
    )
    delta = Deltas(before, after)
    assert delta(f"{OVERHEAD}_count", result="ok") == 3  # StreamChat, Chat, the degraded answer
    assert delta(f"{OVERHEAD}_count", result="error") == 1
    # Exactly the figures the summaries showed (parapet_duration, and the parapet-overhead-ms trailer).
    assert delta(f"{OVERHEAD}_sum", result="ok") == pytest.approx(sum(map(_seconds, answered)), abs=1e-6)
    for bound in ("0.002", "0.005"):  # the targets are bucket bounds
        assert (f"{OVERHEAD}_bucket", (("le", bound), ("result", "ok"))) in after.by_key
    for dependency, count in (("retrieval", 1), ("moderation", 1), ("metering", 1), ("providers", 0)):
        assert delta(DEGRADED, dependency=dependency) == count, dependency
    assert delta(DELIVERED, kind="audit") == 0  # NATS was up: every audit record went out at once
    assert after.value(PENDING, kind="audit") == 0


async def test_audit_records_wait_in_the_outbox_while_nats_is_down(
    suite: Suite, module_nats_server: EmbeddedNats
) -> None:
    tenant = await suite.tenant()

    async def read() -> Samples:
        return await scrape(suite.metrics_port)

    before = await until(read, lambda s: s.value(PENDING) == 0)  # earlier chats' records have all left
    await asyncio.to_thread(module_nats_server.stop)
    try:
        answer = await suite.stream(tenant, question("audit me later", model="gpt"))
        assert answer.error is None, answer.error
        # The publish fails (after its ack timeout), the record goes to the outbox and the relay cannot send it.
        stalled = await until(read, lambda s: s.value(PENDING, kind="audit") == 1, within=30)
        assert Deltas(before, stalled)(DELIVERED) == 0
        assert stalled.value(PENDING, kind="settlement") == 0  # metering is up: settled directly
    finally:
        await asyncio.to_thread(module_nats_server.start)
    delivered = await until(
        read,
        lambda s: Deltas(before, s)(DELIVERED, kind="audit") == 1 and s.value(PENDING) == 0,
        within=60,
    )
    assert Deltas(before, delivered)(DELIVERED, kind="settlement") == 0
    # Delivered means the audit service stores it: nothing was lost.
    audited = await suite.wait_rows(
        "SELECT request_id, status_code FROM audit.records WHERE tenant_id = :t AND kind = 'interaction'",
        t=tenant.tenant_id,
        seconds=30,
    )
    assert [tuple(r) for r in audited] == [(answer.summary.request_id, grpc.StatusCode.OK.value[0])]


async def test_the_audit_record_of_a_chat_carries_its_trace_id(suite: Suite) -> None:
    """docs/observability.md: audit records store the request's trace id (``Interaction.trace_id``), so a record
    leads to its trace, or at least to every log line of its request. The caller's traceparent is continued by
    the gateway (no recording provider here: the light mode keeps the caller's trace id unchanged)."""
    tenant = await suite.tenant()
    caller_trace = uuid.uuid4().hex
    traceparent = ("traceparent", f"00-{caller_trace}-00f067aa0ba902b7-01")
    call = suite.chat.StreamChat(
        question("trace me", model="gpt"), metadata=(*tenant.metadata(), traceparent), timeout=30
    )
    summaries = [event.summary async for event in call if event.HasField("summary")]
    assert len(summaries) == 1
    stored = await suite.wait_rows(
        "SELECT request_id, trace_id FROM audit.records WHERE tenant_id = :t AND kind = 'interaction'",
        t=tenant.tenant_id,
        seconds=30,
    )
    assert [tuple(row) for row in stored] == [(summaries[0].request_id, caller_trace)]
