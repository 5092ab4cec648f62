"""The whole suite started while NATS is down (#11): every service starts and serves, a governed chat is answered,
and when NATS comes what waited in the outboxes reaches audit and billing, every consumer having come up on its own.

Until 2026-12-06 every service but moderation gave up after three attempts to reach NATS at start: a pod
restarted or scaled out during a NATS outage crash-looped while the running ones served.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from parapet import clients
from parapet.cli.health import SERVING, HealthProber
from parapet.embedded import EmbeddedNats, EmbeddedPostgres
from parapet.gateway.v1 import chat_service_pb2
from parapet.inference.v1 import message_pb2
from parapet.kit.health import DEPENDENCIES
from tests.integration.metering.metering_support import wait_until_rollups_match
from tests.scale.calls import bearer, ingest, tenant_rows, tenant_with_key, token_for
from tests.scale.load import QUESTION
from tests.scale.replicas import ReplicaSuite, replica_suite

# Eight processes starting on two cores, each waiting its 5 s for NATS, then the deliveries.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

USES_NATS = ("auth", "metering", "retrieval", "inference", "audit", "billing", "gateway")


async def _chat(suite: ReplicaSuite, api_key: str) -> None:
    """One governed chat through the gateway, answered to its summary."""
    request = chat_service_pb2.StreamChatRequest(
        messages=[message_pb2.Message(role=message_pb2.ROLE_USER, content=QUESTION)], feature="nats-outage"
    )
    async with clients.chat(suite.target("gateway")) as chat:
        events = [
            event async for event in chat.stub.StreamChat(request, metadata=bearer(api_key), timeout=60)
        ]
    summaries = [event.summary for event in events if event.HasField("summary")]
    assert len(summaries) == 1 and summaries[0].request_id, events


async def _audited(database_url: str, tenant: str) -> dict[str, int]:
    """The tenant's stored audit records: how many of each kind."""
    sql = "SELECT kind, count(*) FROM audit.records WHERE tenant_id = :t GROUP BY 1"
    return {kind: int(count) for kind, count in await tenant_rows(database_url, "audit", sql, tenant)}


async def _until_audited(database_url: str, tenant: str, within: float) -> dict[str, int]:
    deadline = time.monotonic() + within
    while True:
        kinds = await _audited(database_url, tenant)
        if kinds.get("interaction", 0) >= 1 and kinds.get("admin_action", 0) >= 1:
            return kinds
        assert time.monotonic() < deadline, f"audit records never arrived: {kinds}"
        await asyncio.sleep(0.5)


def _statuses(suite: ReplicaSuite, service: str) -> dict[str, str]:
    with HealthProber() as prober:
        return {
            replica.name: prober.status(replica.address, service=service, timeout=2.0)
            for replica in suite.all()
        }


async def test_the_suite_starts_and_serves_during_a_nats_outage_and_delivers_when_nats_comes(
    fresh_postgres: EmbeddedPostgres, fresh_nats: EmbeddedNats, tmp_path: Path
) -> None:
    await asyncio.to_thread(fresh_nats.stop)
    with replica_suite(fresh_postgres.url, fresh_nats.url, tmp_path / "home", replicas=1) as suite:
        # Serving without NATS: admin changes (auth's outbox), ingestion and a governed chat (the gateway's audit
        # outbox, metering's usage outbox) all answer.
        tenant, api_key = await tenant_with_key(suite)
        await ingest(suite, bearer(await token_for(suite, api_key)))
        await _chat(suite, api_key)
        assert await _audited(fresh_postgres.url, tenant) == {}
        dependencies = await asyncio.to_thread(_statuses, suite, DEPENDENCIES)
        without = {name for name, status in dependencies.items() if status != SERVING}
        assert without == {f"{service}-0" for service in USES_NATS}, dependencies

        await asyncio.to_thread(fresh_nats.start)

        # What waited is delivered: the chat's usage reaches billing's rollups, its audit record and the admin
        # changes reach audit's store, through consumers that subscribed only once NATS came.
        await wait_until_rollups_match(fresh_postgres.url, tenant, expected_events=1, within=120)
        kinds = await _until_audited(fresh_postgres.url, tenant, within=120)
        assert kinds["interaction"] == 1, kinds
        # Each service's health probes NATS on its own interval: the last one may report it a moment later.
        deadline = time.monotonic() + 60
        while set((dependencies := await asyncio.to_thread(_statuses, suite, DEPENDENCIES)).values()) != {
            SERVING
        }:
            assert time.monotonic() < deadline, dependencies
            await asyncio.sleep(0.5)
        for replica in suite.all():
            log_text = replica.process.log_path.read_text()
            assert "died" not in log_text, (replica.name, log_text[-3000:])  # a background task that gave up
            if replica.spec.name in USES_NATS:
                assert "starting without NATS" in log_text, (replica.name, log_text[-3000:])
