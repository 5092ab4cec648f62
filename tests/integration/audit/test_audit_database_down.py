"""With PostgreSQL (or, for Erase, NATS) down, audit's RPCs answer UNAVAILABLE with RetryInfo (the
contract's promise), not INTERNAL, and work again once it is back. No servicer maps a database failure itself:
the kit's error interceptor does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import grpc.aio
import pytest

from parapet.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from parapet.embedded import EmbeddedNats, EmbeddedPostgres
from parapet.kit.database import Database
from parapet.kit.errors import error_details
from parapet.kit.identity import Principal
from parapet.kit.testing import TestKeys, running
from parapet.kit.timeouts import within
from services.audit.app import APP
from services.audit.settings import AuditSettings
from tests.integration.audit.conftest import audit_settings, interaction, new_tenant, stored


async def test_a_database_outage_is_unavailable_and_passes(
    fresh_postgres: EmbeddedPostgres, nats_url: str, tmp_path: Path, keys: TestKeys
) -> None:
    tenant = new_tenant()
    admin = keys.metadata(Principal(tenant_id=tenant, subject="auditor", roles=("admin",)))
    producer = keys.metadata(Principal(tenant_id=tenant, subject="gateway", credential_type="service"))
    settings = audit_settings(fresh_postgres.url, nats_url, tmp_path, keys)
    async with (
        running(APP, settings) as (_server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = audit_service_pb2_grpc.AuditServiceStub(channel)
        await stub.Record(audit_service_pb2.RecordRequest(record=interaction("user-1")), metadata=producer)

        async def verify() -> audit_service_pb2.VerifyChainResponse:
            return await stub.VerifyChain(  # type: ignore[no-any-return]
                audit_service_pb2.VerifyChainRequest(), metadata=admin, timeout=20
            )

        async def query() -> list[audit_service_pb2.QueryInteractionsResponse]:
            request = audit_service_pb2.QueryInteractionsRequest()
            return [page async for page in stub.QueryInteractions(request, metadata=admin, timeout=20)]

        erase = audit_service_pb2.EraseRequest(user_id="user-1", reason="ticket 9")
        fresh_postgres.stop()
        for call in (
            verify,
            query,
            lambda: stub.Erase(erase, metadata=admin, timeout=20),
            lambda: stub.Record(
                audit_service_pb2.RecordRequest(record=interaction("user-2")), metadata=producer
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call()
            details = error_details(raised.value)
            assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
            assert (
                details.retry_after is not None
                and details.message == "the database is unavailable; retry shortly"
            )

        fresh_postgres.start()
        assert (await verify()).records_verified == 1
        assert (await stub.Erase(erase, metadata=admin, timeout=20)).erased_count == 1


async def test_erase_with_nats_down_is_unavailable_before_recording_anything(
    database_url: str, fresh_nats: EmbeddedNats, tmp_path: Path, keys: TestKeys
) -> None:
    """Erase reaches the set-aside records in NATS first: with NATS down it records no erasure (none would be
    complete) and says to retry; once NATS is back the same call erases."""
    tenant = new_tenant()
    admin = keys.metadata(Principal(tenant_id=tenant, subject="auditor", roles=("admin",)))
    producer = keys.metadata(Principal(tenant_id=tenant, subject="gateway", credential_type="service"))
    settings = audit_settings(database_url, fresh_nats.url, tmp_path, keys)
    database = Database(database_url, "audit", pool_size=1, max_overflow=0)
    try:
        await _erase_with_nats_down_then_up(database, fresh_nats, settings, tenant, admin, producer)
    finally:
        await database.close()


async def _erase_with_nats_down_then_up(
    database: Database,
    fresh_nats: EmbeddedNats,
    settings: AuditSettings,
    tenant: str,
    admin: tuple[tuple[str, str], ...],
    producer: tuple[tuple[str, str], ...],
) -> None:
    async with (
        running(APP, settings) as (_server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = audit_service_pb2_grpc.AuditServiceStub(channel)
        await stub.Record(audit_service_pb2.RecordRequest(record=interaction("user-1")), metadata=producer)
        erase = audit_service_pb2.EraseRequest(user_id="user-1", reason="ticket 10")

        fresh_nats.stop()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Erase(erase, metadata=admin, timeout=30)
        details = error_details(raised.value)
        assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
        assert details.retry_after is not None
        assert await stored(database, tenant) == 1  # no AdminAction: nothing was recorded as erased

        fresh_nats.start()
        erased = await within(30, _erase_when_connected(stub, erase, admin))
        assert (erased.erased_count, erased.rejected_deleted_count) == (1, 0)


async def _erase_when_connected(
    stub: audit_service_pb2_grpc.AuditServiceStub,
    erase: audit_service_pb2.EraseRequest,
    metadata: tuple[tuple[str, str], ...],
) -> audit_service_pb2.EraseResponse:
    """Erase, retried as the UNAVAILABLE status says to, while the service reconnects to NATS."""
    while True:
        try:
            return await stub.Erase(erase, metadata=metadata, timeout=10)  # type: ignore[no-any-return]
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            await asyncio.sleep(0.5)
