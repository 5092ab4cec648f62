"""Delivery through the audit stream: records published while the audit service is down all arrive after
it restarts, none twice, duplicates and redeliveries absorbed, poison messages set aside (kept in the
AUDIT_REJECTED stream with their reason)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from sqlalchemy import text

from parapet.audit.v1 import admin_action_pb2, audit_record_pb2
from parapet.events.audit import (
    REJECTED_FROM_HEADER,
    REJECTED_REASON_HEADER,
    REJECTED_STREAM,
    REJECTED_SUBJECT_PREFIX,
    publish,
    subject,
)
from parapet.kit.testing import TestKeys, running
from services.audit.app import APP, body_defaults
from services.audit.consumer import AuditConsumer
from services.audit.signing import load_signer
from services.audit.verify import verify_chain
from tests.integration.audit.conftest import harness, interaction, new_tenant, stored, wait_for_stored


def _admin_action(tenant: str) -> audit_record_pb2.AuditRecord:
    record = audit_record_pb2.AuditRecord(
        record_id=str(uuid.uuid4()),
        tenant_id=tenant,
        admin_action=admin_action_pb2.AdminAction(
            method="/parapet.auth.v1.TenantAdminService/RevokeApiKey", target="key-9"
        ),
    )
    record.create_time.GetCurrentTime()
    return record


async def test_records_published_while_audit_is_down_arrive_once_after_restart(
    database_url: str, nats_url: str, tmp_path: Path, keys: TestKeys
) -> None:
    tenant = new_tenant()
    async with harness(database_url, nats_url, tmp_path, keys) as parts:
        settings, database, bus = parts.settings, parts.database, parts.bus
        async with running(APP, settings):
            before = [interaction(f"user-{i}") for i in range(20)]
            for record in before:
                record.tenant_id = tenant
                await publish(bus, record, source="/parapet/gateway")
            assert await wait_for_stored(database, tenant, 20) == 20

        # The audit service is down; the gateway and auth keep publishing.
        during: list[audit_record_pb2.AuditRecord] = []
        for i in range(150):
            record = interaction(f"user-{i % 7}") if i % 10 else _admin_action(tenant)
            record.tenant_id = tenant
            during.append(record)
            await publish(bus, record, source="/parapet/gateway")
        for record in during[:30]:
            # A producer's retry after a lost ack: the stream de-duplicates it by Nats-Msg-Id ...
            await publish(bus, record, source="/parapet/gateway")
        for record in during[30:45]:
            # ... and a copy with another message id (outside the window) reaches the consumer, which
            # recognises the record id.
            await bus.publish(subject(tenant), record.SerializeToString(), msg_id=f"{record.record_id}-again")
        for record in before[:5]:
            await bus.publish(subject(tenant), record.SerializeToString(), msg_id=f"{record.record_id}-late")
        # A poison message (tenant does not match its subject) must not block what follows it.
        wrong = interaction()
        wrong.tenant_id = "some-other-tenant"
        await bus.publish(subject(tenant), wrong.SerializeToString(), msg_id=wrong.record_id)
        assert await stored(database, tenant) == 20

        async with running(APP, settings):
            # Messages published in the second after the stop may go to the stopped consumer's last pull
            # request; JetStream redelivers them after ack_wait (30 s): late, never lost.
            assert await wait_for_stored(database, tenant, 170, within=60.0) == 170
            await asyncio.sleep(1.0)  # redeliveries would land now, if any were to double-append
            assert await stored(database, tenant) == 170

        async with database.transaction() as session:
            rows = (
                await session.execute(
                    text(
                        "SELECT record_id::text AS id, sequence FROM records WHERE tenant_id = :t ORDER BY sequence"
                    ),
                    {"t": tenant},
                )
            ).all()
        assert [row.sequence for row in rows] == list(range(1, 171))
        assert {row.id for row in rows} == {r.record_id for r in before + during}
        assert wrong.record_id not in {row.id for row in rows}
        verification = await verify_chain(database, tenant, load_signer(settings.audit_checkpoint_key_file))
        assert (verification.intact, verification.records_verified) == (True, 170)


async def test_what_can_never_be_stored_is_set_aside_with_its_reason_and_the_rest_stored(
    database_url: str, nats_url: str, tmp_path: Path, keys: TestKeys
) -> None:
    """A record the database refuses (a NUL in its prompt: no PostgreSQL text holds one) once failed its whole
    batch's transaction, which was redelivered for ever and stalled every record behind it."""
    tenant = new_tenant()
    async with harness(database_url, nats_url, tmp_path, keys) as parts:
        settings, database, bus = parts.settings, parts.database, parts.bus
        first, refused, last = (
            interaction("user-1"),
            interaction("user-2", prompt="a\x00b"),
            interaction("user-3"),
        )
        for record in (first, refused, last):
            record.tenant_id = tenant
        # The AUDIT work queue admits one consumer: the service's gives way to this test's own.
        await parts.without_consumer()
        await publish(bus, first, source="/parapet/gateway")
        await publish(bus, refused, source="/parapet/gateway")
        await bus.publish(subject(tenant), b"\xff not an audit record", msg_id=str(uuid.uuid4()))
        await publish(bus, last, source="/parapet/gateway")
        # The service's consumer, driven here on exactly these four messages in one batch: the refused
        # record fails the batch's transaction, and the halving must find it.
        pulled = await parts.pull(subject(tenant), f"t-{tenant}")
        batch = await pulled.fetch(10, timeout=5)
        assert len(batch) == 4
        consumer = AuditConsumer(database, bus, body_defaults(settings), durable="unused", batch_size=500)
        await consumer.handle(batch)
        assert await stored(database, tenant) == 2
        aside = await bus.jetstream.pull_subscribe(
            REJECTED_SUBJECT_PREFIX + tenant, stream=REJECTED_STREAM.name
        )
        kept = await aside.fetch(2, timeout=10)
        headers = [message.headers or {} for message in kept]
        reasons = {h[REJECTED_REASON_HEADER]: message for h, message in zip(headers, kept, strict=True)}
        refusal = next(reason for reason in reasons if reason != "not an AuditRecord")
        assert refusal.startswith("the database refuses it (SQLSTATE 22"), refusal  # class 22: data exception
        stored_aside = audit_record_pb2.AuditRecord.FromString(reasons[refusal].data)
        assert (
            stored_aside.record_id == refused.record_id and stored_aside.interaction.body.prompt == "a\x00b"
        )
        assert all(h[REJECTED_FROM_HEADER] == subject(tenant) for h in headers)
        async with database.transaction() as session:
            ids = (
                (
                    await session.execute(
                        text("SELECT record_id::text FROM records WHERE tenant_id = :t ORDER BY sequence"),
                        {"t": tenant},
                    )
                )
                .scalars()
                .all()
            )
        assert ids == [first.record_id, last.record_id]
        verification = await verify_chain(database, tenant, load_signer(settings.audit_checkpoint_key_file))
        assert (verification.intact, verification.records_verified) == (True, 2)
        state = await pulled.consumer_info()
        assert state.num_ack_pending == 0 and state.num_pending == 0  # acked or set aside, none left
