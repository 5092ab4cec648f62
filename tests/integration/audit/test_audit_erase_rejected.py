"""Erase reaches the records set aside as unstorable (AUDIT_REJECTED): they may hold the user's prompts and
answers, and before they stayed there for 30 days after an erasure. Only the user's, of the caller's tenant,
are deleted; what names no user (an undecodable message) stays for the operator."""

from __future__ import annotations

import uuid

from google.protobuf.message import DecodeError
from sqlalchemy import text

from parapet.audit.v1 import audit_record_pb2, audit_service_pb2
from parapet.events.audit import REJECTED_STREAM, REJECTED_SUBJECT_PREFIX, publish, subject
from parapet.kit.bus import Bus
from tests.integration.audit.conftest import (
    Audit,
    in_stream,
    interaction,
    new_tenant,
    wait_for_count,
    wait_for_stored,
)

SOURCE = "/parapet/gateway"


async def _set_aside(bus: Bus, tenant: str, user: str, *, nul_prompt: bool = False) -> None:
    """Publish a record of ``user`` on ``tenant``'s subject that the audit service will set aside: one naming
    another tenant than its subject's, or one whose prompt holds a NUL (no PostgreSQL text can)."""
    record = interaction(user, prompt="a\x00b") if nul_prompt else interaction(user)
    record.tenant_id = tenant if nul_prompt else "some-other-tenant"
    await bus.publish(subject(tenant), record.SerializeToString(), msg_id=record.record_id)


async def _rejected(bus: Bus, tenant: str) -> int:
    return await in_stream(bus, REJECTED_STREAM.name, REJECTED_SUBJECT_PREFIX + tenant)


async def _users_left(bus: Bus, tenant: str) -> list[str]:
    """The user of each message left on ``tenant``'s rejected subject ("?" for one that is no record)."""
    aside = await bus.jetstream.pull_subscribe(
        REJECTED_SUBJECT_PREFIX + tenant, stream=REJECTED_STREAM.name, durable=None
    )
    try:
        messages = await aside.fetch(10, timeout=5)
    finally:
        await aside.unsubscribe()
    users = []
    for message in messages:
        try:
            users.append(audit_record_pb2.AuditRecord.FromString(message.data).interaction.user_id)
        except DecodeError:
            users.append("?")
    return sorted(users)


async def test_erase_deletes_the_users_set_aside_records_of_the_tenant_only(
    audit: Audit, nats_url: str
) -> None:
    tenant, neighbour = new_tenant(), new_tenant()
    bus = await Bus.connect(nats_url)
    try:
        await _set_aside(bus, tenant, "user-x")
        await _set_aside(bus, tenant, "user-x", nul_prompt=True)
        await _set_aside(bus, tenant, "user-y")
        await bus.publish(subject(tenant), b"\xff not an audit record", msg_id=str(uuid.uuid4()))
        await _set_aside(bus, neighbour, "user-x")
        stored = interaction("user-x")
        stored.tenant_id = tenant
        await publish(bus, stored, source=SOURCE)
        assert await wait_for_stored(audit.database, tenant, 1) == 1
        assert await wait_for_count(lambda: _rejected(bus, tenant), 4) == 4
        assert await wait_for_count(lambda: _rejected(bus, neighbour), 1) == 1

        request = audit_service_pb2.EraseRequest(user_id="user-x", reason="ticket 7")
        erased = await audit.stub.Erase(request, metadata=audit.metadata(tenant), timeout=10)
        assert (erased.erased_count, erased.rejected_deleted_count) == (1, 2)
        assert await _users_left(bus, tenant) == ["?", "user-y"]
        assert await _rejected(bus, neighbour) == 1  # another tenant's copy is out of this caller's reach

        again = await audit.stub.Erase(request, metadata=audit.metadata(tenant), timeout=10)
        assert (again.erased_count, again.rejected_deleted_count) == (0, 0)

        # The erasure's own record says what it removed from each place.
        async with audit.database.transaction() as session:
            first = (
                await session.execute(
                    text(
                        "SELECT metadata FROM audit.records WHERE tenant_id = :t AND kind = 'admin_action' "
                        "ORDER BY sequence LIMIT 1"
                    ),
                    {"t": tenant},
                )
            ).scalar_one()
        attributes = audit_record_pb2.AuditRecord.FromString(first).admin_action.attributes
        assert (attributes["erased_count"], attributes["rejected_deleted_count"]) == ("1", "2")
    finally:
        await bus.close()
