"""Erase reaches records still waiting in the AUDIT stream: a record of the user created before the erasure and
stored after it (the consumer was behind, as while audit or its database is down) is stored without its bodies,
as Erase leaves stored ones; a record created after the erasure is new activity and keeps them. Before, Erase
changed only rows already stored, and the waiting records arrived afterwards with their prompts and answers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc.aio
from sqlalchemy import text

from parapet.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from parapet.events.audit import publish, subject
from parapet.kit.database import Database
from parapet.kit.identity import Principal
from parapet.kit.testing import TestKeys, running
from services.audit.app import APP
from tests.integration.audit.conftest import (
    Audit,
    harness,
    interaction,
    new_tenant,
    remove_consumer,
    stored,
    wait_for_stored,
)

SOURCE = "/parapet/gateway"


async def _bodies(database: Database, tenant: str) -> dict[str, tuple[Any, Any, bool]]:
    """record id → (prompt, response, erase_time set), for ``tenant``'s interactions."""
    async with database.transaction() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT record_id::text AS id, prompt, response, erase_time FROM records"
                    " WHERE tenant_id = :t AND kind = 'interaction'"
                ),
                {"t": tenant},
            )
        ).all()
    return {row.id: (row.prompt, row.response, row.erase_time is not None) for row in rows}


async def test_records_waiting_in_the_stream_when_their_user_is_erased_are_stored_without_bodies(
    database_url: str, nats_url: str, tmp_path: Path, keys: TestKeys
) -> None:
    tenant = new_tenant()
    async with harness(database_url, nats_url, tmp_path, keys) as parts:
        database, bus = parts.database, parts.bus
        await parts.without_consumer()
        waiting = [
            interaction("erin", tenant_id=tenant),
            interaction("erin", tenant_id=tenant),
            interaction("frank", tenant_id=tenant),
        ]
        for record in waiting:
            await publish(bus, record, source=SOURCE)
        # A consumer of the test's own holds the AUDIT work queue, so the service's cannot take these yet.
        holder = f"hold-{tenant}"
        await parts.pull(subject(tenant), holder)
        async with (
            running(APP, parts.settings) as (_server, port),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            stub = audit_service_pb2_grpc.AuditServiceStub(channel)
            admin = keys.metadata(Principal(tenant_id=tenant, subject="dpo", roles=("admin",)))
            await asyncio.sleep(1.5)  # the service has tried to subscribe, and been refused
            assert await stored(database, tenant) == 0

            erased = await stub.Erase(
                audit_service_pb2.EraseRequest(user_id="erin", reason="ticket 7"), metadata=admin, timeout=10
            )
            assert erased.erased_count == 0  # none of hers stored yet
            later = interaction("erin", tenant_id=tenant)  # new activity after the erasure
            later.create_time.FromDatetime(datetime.now(UTC) + timedelta(seconds=1))
            await publish(bus, later, source=SOURCE)

            await remove_consumer(bus, holder)  # the service's consumer catches up
            assert await wait_for_stored(database, tenant, 5) == 5  # four interactions and the erasure
            bodies = await _bodies(database, tenant)
            for record in waiting[:2]:
                assert bodies[record.record_id] == (None, None, True)
            for record in (waiting[2], later):
                assert bodies[record.record_id] == (
                    record.interaction.body.prompt,
                    record.interaction.body.response,
                    False,
                )
            verified = await stub.VerifyChain(
                audit_service_pb2.VerifyChainRequest(), metadata=admin, timeout=10
            )
            assert (verified.intact, verified.records_verified) == (
                True,
                5,
            )  # only bodies differ: hashes hold


async def test_a_record_sent_by_rpc_after_its_users_erasure_is_stored_without_bodies(audit: Audit) -> None:
    """The marker is read by every append, so a producer's late Record of a record made before the erasure is
    erased as well; the repeat of a stored record is still recognised as the same (only bodies differ)."""
    tenant = new_tenant()
    before = interaction("erin")
    before.create_time.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
    erase = audit_service_pb2.EraseRequest(user_id="erin", reason="ticket 8")
    await audit.stub.Erase(erase, metadata=audit.metadata(tenant), timeout=10)
    first = await audit.record(tenant, before)
    again = await audit.record(tenant, before)
    assert (first.already_recorded, again.already_recorded) == (False, True)
    assert (await _bodies(audit.database, tenant))[before.record_id] == (None, None, True)
    assert (await audit.verify(tenant)).intact
