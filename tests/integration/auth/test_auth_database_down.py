"""With PostgreSQL down, warm credentials keep authenticating and cold ones get UNAVAILABLE, not INTERNAL."""

from __future__ import annotations

from pathlib import Path

import grpc
import grpc.aio
import pytest

from parapet.auth.v1 import auth_service_pb2 as apb
from parapet.embedded import EmbeddedPostgres
from parapet.kit.errors import error_details
from parapet.kit.testing import running
from services.auth.app import APP
from tests.integration.auth.conftest import Auth, auth_settings, signer_for


async def test_a_database_outage_keeps_warm_keys_working(
    fresh_postgres: EmbeddedPostgres, nats_url: str, signing_key_file: Path
) -> None:
    settings = auth_settings(fresh_postgres.url, nats_url, signing_key_file)
    async with (
        running(APP, settings) as (_server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        auth = Auth(channel, signer_for(signing_key_file))
        tenant = await auth.new_tenant()
        await auth.new_user(tenant, "svc")
        _, warm = await auth.new_key(tenant, "svc")
        _, cold = await auth.new_key(tenant, "svc")
        await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=warm))

        fresh_postgres.stop()
        issued = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=warm))
        assert issued.principal.tenant_id == tenant
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=cold))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        details = error_details(raised.value)
        assert details.reason == "DEPENDENCY_UNAVAILABLE" and details.retry_after is not None

        fresh_postgres.start()
        issued = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=cold))
        assert issued.principal.subject == "svc"
