"""With PostgreSQL down, audit's RPCs answer UNAVAILABLE with RetryInfo (the contract's promise), not INTERNAL,
and work again once it is back. No servicer maps these failures itself: the kit's error interceptor does."""

from __future__ import annotations

from pathlib import Path

import grpc
import grpc.aio
import pytest

from parapet.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from parapet.embedded import EmbeddedPostgres
from parapet.kit.errors import error_details
from parapet.kit.identity import Principal
from parapet.kit.testing import TestKeys, running
from services.audit.app import APP
from tests.integration.audit.conftest import audit_settings, interaction, new_tenant


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
