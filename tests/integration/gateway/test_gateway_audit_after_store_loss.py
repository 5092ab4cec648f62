"""Audit records after NATS lost its store (an emptyDir, a wiped volume): the AUDIT stream is gone. The gateway
and auth publish to it from outboxes, and both declared it only at start; they now declare it again when a
publish finds no stream (``Bus.publish``). In a module of its own: the suite's NATS is restarted empty."""

from __future__ import annotations

import asyncio
import shutil

from grpc_health.v1 import health_pb2
from nats.js.errors import NotFoundError

from parapet.embedded import EmbeddedNats
from parapet.events.audit import AUDIT_STREAM
from parapet.kit import timeouts
from parapet.kit.bus import Bus
from parapet.kit.testing import health_status
from tests.integration.gateway.conftest import MODULE, Suite, question

pytestmark = MODULE

INTERACTIONS = "SELECT request_id FROM audit.records WHERE tenant_id = :t AND kind = 'interaction'"
ADMIN_ACTIONS = "SELECT record_id FROM audit.records WHERE tenant_id = :t AND kind = 'admin_action'"
QUEUED = "SELECT count(*) FROM gateway.outbox WHERE tenant_id = :t AND kind = 'audit'"


async def test_audit_records_of_chats_and_admin_changes_reach_the_audit_service_after_nats_lost_its_store(
    suite: Suite, module_nats_server: EmbeddedNats
) -> None:
    tenant = await suite.tenant()
    first = await suite.stream(tenant, question("before the loss", model="gpt"))
    assert first.error is None, first.error
    assert len(await suite.wait_rows(INTERACTIONS, t=tenant.tenant_id, seconds=30)) == 1
    admin_actions = len(await suite.rows(ADMIN_ACTIONS, t=tenant.tenant_id))
    assert admin_actions > 0  # creating the tenant, its user and key were audited

    await asyncio.to_thread(module_nats_server.stop)
    await asyncio.to_thread(shutil.rmtree, module_nats_server.store_dir)
    await asyncio.to_thread(module_nats_server.start)

    async def gateway_serving() -> None:  # reconnected to NATS (its health probes NATS)
        while True:
            if await health_status(suite.channel) == health_pb2.HealthCheckResponse.SERVING:
                return
            await asyncio.sleep(0.1)

    await timeouts.within(30, gateway_serving())
    answer = await suite.stream(tenant, question("after the loss", model="gpt"))
    assert answer.error is None, answer.error
    # Published at once (the gateway declared AUDIT again), not left to its outbox's retries.
    assert await suite.scalar(QUEUED, t=tenant.tenant_id) == 0
    audited = await suite.wait_rows(INTERACTIONS, t=tenant.tenant_id, seconds=60, count=2)
    assert {row[0] for row in audited} == {first.summary.request_id, answer.summary.request_id}
    # Auth's outbox relay: an admin change after the loss is audited too.
    await suite.user(tenant.tenant_id, "bob", ("admin",))
    changes = await suite.wait_rows(ADMIN_ACTIONS, t=tenant.tenant_id, seconds=60, count=admin_actions + 1)
    assert len(changes) > admin_actions


async def test_a_gateway_whose_nats_lost_its_store_puts_the_audit_stream_back_itself(
    suite: Suite, fresh_nats: EmbeddedNats
) -> None:
    """The test above passes on the earlier code too: the audit service's consumer declares AUDIT again when its
    fetch fails, and the gateway's outbox then delivers. Here no audit service shares the gateway's NATS: before,
    nothing declared AUDIT again, and the record waited in the outbox for ever (until a gateway restarted)."""
    tenant = await suite.tenant()
    subject = f"parapet.audit.v1.{tenant.tenant_id}"
    async with suite.gateway(nats_url=fresh_nats.url) as chat:
        assert (await suite.stream(tenant, question("before the loss", model="gpt"), stub=chat)).error is None
        await asyncio.to_thread(fresh_nats.stop)
        await asyncio.to_thread(shutil.rmtree, fresh_nats.store_dir)
        await asyncio.to_thread(fresh_nats.start)
        assert (await suite.stream(tenant, question("after the loss", model="gpt"), stub=chat)).error is None
        bus = await Bus.connect(fresh_nats.url)
        try:

            async def waiting() -> int:
                """Records on the tenant's subject in AUDIT (a work queue no consumer takes from here)."""
                while True:
                    try:
                        info = await bus.jetstream.stream_info(AUDIT_STREAM.name, subjects_filter=subject)
                    except NotFoundError:
                        info = None
                    if info is not None and (info.state.subjects or {}).get(subject, 0) >= 1:
                        return int((info.state.subjects or {})[subject])
                    await asyncio.sleep(0.2)

            # The record of the chat after the loss (the one before went with the store).
            assert await timeouts.within(60, waiting()) == 1
        finally:
            await bus.close()
