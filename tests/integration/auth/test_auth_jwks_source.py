"""Another service verifies auth's tokens with keys fetched from GetJwks (the kit's auth_jwks_source)."""

from __future__ import annotations

import grpc
import grpc.aio

from parapet.auth.v1 import auth_service_pb2 as apb
from parapet.kit.app import Resources, ServiceApp
from parapet.kit.config import ServiceSettings
from parapet.kit.context import require_principal
from parapet.kit.identity import auth_jwks_source
from parapet.kit.testing import StringValue, fast_settings, running, string_service, unary_caller
from tests.integration.auth.conftest import Auth

SERVICE = "test.v1.WhoAmI"


async def who(
    request: StringValue, context: grpc.aio.ServicerContext[StringValue, StringValue]
) -> StringValue:
    principal = require_principal()
    return StringValue(value=f"{principal.tenant_id}/{principal.subject}")


async def test_a_service_without_a_jwks_file_verifies_through_getjwks(auth: Auth) -> None:
    tenant = await auth.new_tenant()
    await auth.new_user(tenant, "svc")
    _, key = await auth.new_key(tenant, "svc")
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key))
    auth_target = auth.target

    async def register(server: grpc.aio.Server, resources: Resources[ServiceSettings]) -> None:
        server.add_generic_rpc_handlers((string_service(SERVICE, unary={"Who": who}),))

    app = ServiceApp(
        name="whoami",
        settings_type=ServiceSettings,
        register=register,
        service_names=(SERVICE,),
        key_source=lambda settings: auth_jwks_source(auth_target, settings),
    )
    async with (
        running(app, fast_settings()) as (_, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        answer = await unary_caller(channel, f"/{SERVICE}/Who")(
            StringValue(), metadata=(("authorization", f"Bearer {issued.token}"),)
        )
    assert answer.value == f"{tenant}/svc"
