"""Admin changes and refused attempts reach the audit stream through the outbox, also across a NATS outage."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import grpc.aio
import psycopg
import pytest
from sqlalchemy import text

from parapet.auth.v1 import tenant_admin_service_pb2 as tpb
from parapet.embedded import EmbeddedNats
from parapet.kit.database import Database
from parapet.kit.testing import running
from services.auth.app import APP
from services.auth.invalidation import libpq_url
from services.auth.store import AuthStore
from tests.integration.auth.auth_support import audit_records
from tests.integration.auth.conftest import PLATFORM, Auth, auth_settings, signer_for


async def test_changes_are_published_with_cloudevents_headers(auth: Auth, nats_url: str) -> None:
    tenant = await auth.new_tenant()
    await auth.new_user(tenant, "svc")
    key_id, _ = await auth.new_key(tenant, "svc")
    await auth.admin.RevokeApiKey(
        tpb.RevokeApiKeyRequest(tenant_id=tenant, api_key_id=key_id, reason="rotated"), metadata=auth.operator
    )
    records = await audit_records(nats_url, tenant, 4)
    methods = [r.admin_action.method.rsplit("/", 1)[1] for r, _ in records]
    assert methods == ["CreateTenant", "CreateUser", "CreateApiKey", "RevokeApiKey"]
    revoke, headers = records[3]
    assert revoke.tenant_id == tenant and revoke.admin_action.target == key_id
    assert revoke.admin_action.actor.tenant_id == PLATFORM and revoke.admin_action.status_code == 0
    assert revoke.admin_action.attributes["reason"] == "rotated"
    assert headers["Nats-Msg-Id"] == revoke.record_id == headers["ce-id"]
    assert headers["ce-type"] == "dev.parapet.audit.v1.AuditRecord" and headers["ce-subject"] == tenant
    assert headers["ce-source"] == "/parapet/auth"
    # The key's secret never appears in the trail, only its public prefix.
    create_key = records[2][0].admin_action
    assert create_key.attributes["prefix"].startswith("pk_") and len(create_key.attributes["prefix"]) == 15


async def test_refused_attempts_go_to_the_actors_own_trail(auth: Auth, nats_url: str) -> None:
    victim = await auth.new_tenant()
    attacker = await auth.new_tenant()
    await auth.new_user(victim, "svc")
    with pytest.raises(grpc.aio.AioRpcError):
        await auth.admin.ListUsers(
            tpb.ListUsersRequest(tenant_id=victim), metadata=auth.as_(attacker, "mallory", ("admin",))
        )
    records = await audit_records(nats_url, attacker, 2)  # CreateTenant, then the refused call
    refused = records[1][0].admin_action
    assert refused.method.endswith("/ListUsers") and refused.target == victim
    assert refused.status_code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert refused.error_reason == "TENANT_MISMATCH" and refused.actor.subject == "mallory"


async def test_nothing_is_lost_while_nats_is_down(
    database_url: str, fresh_nats: EmbeddedNats, signing_key_file: Path
) -> None:
    settings = auth_settings(database_url, fresh_nats.url, signing_key_file, nats_reconnect_wait_seconds=0.2)
    async with (
        running(APP, settings) as (_server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        auth = Auth(channel, signer_for(signing_key_file))
        fresh_nats.stop()
        tenant = await auth.new_tenant()  # commits with its outbox row although NATS is down
        async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
            pending = await (
                await conn.execute("SELECT sent_time FROM auth.audit_outbox WHERE tenant_id = %s", (tenant,))
            ).fetchall()
        assert pending == [(None,)]
        fresh_nats.start()
        records = await audit_records(fresh_nats.url, tenant, 1)
        assert records[0][0].admin_action.method.endswith("/CreateTenant")
        for _ in range(100):
            async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
                sent = await (
                    await conn.execute(
                        "SELECT sent_time IS NOT NULL FROM auth.audit_outbox WHERE tenant_id = %s", (tenant,)
                    )
                ).fetchone()
            if sent == (True,):
                break
            await asyncio.sleep(0.1)
        assert sent == (True,)


async def test_published_records_are_pruned_after_their_retention(
    auth: Auth, nats_url: str, database_url: str
) -> None:
    tenant = await auth.new_tenant()
    await audit_records(nats_url, tenant, 1)  # published
    database = Database(database_url, "auth")

    async def rows() -> list[object]:
        async with store.tenant(tenant) as session:
            return [r[0] for r in (await session.execute(text("SELECT sent_time FROM audit_outbox"))).all()]

    try:
        store = AuthStore(database)
        for _ in range(50):  # the relay marks the row sent just after JetStream's ack
            if None not in await rows():
                break
            await asyncio.sleep(0.1)
        await store.prune_sent(3600.0)
        assert len(await rows()) == 1  # within its retention: kept
        await store.prune_sent(0.0)
        assert await rows() == []
    finally:
        await database.close()


async def test_a_tenant_state_change_records_its_reason(auth: Auth, nats_url: str) -> None:
    # The contract's `reason` ("why, for the audit trail") of DisableTenant and EnableTenant was dropped
    # until 2026-12-06: only RevokeApiKey's reached the record.
    tenant = await auth.new_tenant()
    await auth.admin.DisableTenant(
        tpb.DisableTenantRequest(tenant_id=tenant, reason="unpaid invoice"), metadata=auth.operator
    )
    await auth.admin.EnableTenant(
        tpb.EnableTenantRequest(tenant_id=tenant, reason="paid"), metadata=auth.operator
    )
    records = await audit_records(nats_url, tenant, 3)
    actions = [
        (r.admin_action.method.rsplit("/", 1)[1], r.admin_action.attributes.get("reason")) for r, _ in records
    ]
    assert actions == [("CreateTenant", None), ("DisableTenant", "unpaid invoice"), ("EnableTenant", "paid")]
