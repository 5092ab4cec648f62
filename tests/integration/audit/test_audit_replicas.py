"""Two replicas share the durable consumer and take RPCs at once: each tenant's chain stays one chain."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc.aio
from sqlalchemy import text

from parapet.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from parapet.events.audit import publish
from parapet.kit.bus import Bus
from parapet.kit.database import Database
from parapet.kit.identity import Principal
from parapet.kit.testing import TestKeys, running
from services.audit.app import APP
from services.audit.signing import load_signer
from services.audit.verify import verify_chain
from tests.integration.audit.conftest import audit_settings, interaction, new_tenant


async def test_two_replicas_never_fork_a_chain(
    database_url: str, nats_url: str, tmp_path: Path, keys: TestKeys
) -> None:
    tenants = [new_tenant(), new_tenant()]
    settings = audit_settings(database_url, nats_url, tmp_path, keys)
    database = Database(database_url, "audit", pool_size=2, max_overflow=0)
    bus = await Bus.connect(nats_url)
    try:
        async with (
            running(APP, settings) as (_a, port_a),
            running(APP, settings) as (_b, port_b),
            grpc.aio.insecure_channel(f"127.0.0.1:{port_a}") as channel_a,
            grpc.aio.insecure_channel(f"127.0.0.1:{port_b}") as channel_b,
        ):
            stubs = [audit_service_pb2_grpc.AuditServiceStub(c) for c in (channel_a, channel_b)]

            async def publish_all() -> None:
                for i in range(200):
                    record = interaction(f"user-{i % 5}")
                    record.tenant_id = tenants[i % 2]
                    await publish(bus, record, source="/parapet/gateway")

            async def record_over_rpc(i: int) -> None:
                tenant = tenants[i % 2]
                metadata = keys.metadata(Principal(tenant_id=tenant, subject="gw", credential_type="service"))
                await stubs[i % 2].Record(
                    audit_service_pb2.RecordRequest(record=interaction()), metadata=metadata, timeout=20
                )

            await asyncio.gather(publish_all(), *(record_over_rpc(i) for i in range(40)))
            for _ in range(300):
                async with database.transaction() as session:
                    stored = (
                        await session.execute(
                            text("SELECT count(*) FROM records WHERE tenant_id = ANY(:t)"), {"t": tenants}
                        )
                    ).scalar_one()
                if stored >= 240:
                    break
                await asyncio.sleep(0.1)
            assert stored == 240

        signer = load_signer(settings.audit_checkpoint_key_file)
        for tenant in tenants:
            result = await verify_chain(database, tenant, signer)
            assert (result.intact, result.records_verified, result.head_sequence) == (True, 120, 120)
    finally:
        await bus.close()
        await database.close()
