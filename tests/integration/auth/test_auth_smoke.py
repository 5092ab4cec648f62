"""The main path end to end: tenant, user, key, Authenticate, the token verifies, Authorize decides."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import jwt
import pytest
from google.protobuf import timestamp_pb2
from prometheus_client import REGISTRY

from parapet.auth.v1 import api_key_pb2
from parapet.auth.v1 import auth_service_pb2 as apb
from parapet.auth.v1 import permission_pb2 as perm
from parapet.auth.v1 import tenant_admin_service_pb2 as tpb
from parapet.kit.errors import error_details
from parapet.kit.identity import StaticJwks, TokenVerifier
from tests.integration.auth.conftest import Auth, running_auth


async def test_api_key_to_token_to_decision(auth: Auth) -> None:
    tenant = await auth.new_tenant()
    await auth.new_user(tenant, "svc", roles=("admin",), groups=("finance",))
    key_id, key = await auth.new_key(tenant, "svc", scopes=("chat", "documents.read"))

    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key))
    jwks = await auth.auth.GetJwks(apb.GetJwksRequest())
    from google.protobuf.json_format import MessageToDict

    verifier = TokenVerifier(
        StaticJwks({"keys": [MessageToDict(k, preserving_proto_field_name=True) for k in jwks.keys]})
    )
    principal = await verifier.verify(issued.token)
    assert (principal.tenant_id, principal.subject, principal.groups) == (tenant, "svc", ("finance",))
    assert principal.api_key_id == key_id and principal.credential_type == "api_key"
    assert principal.scopes == ("chat", "documents.read")
    assert issued.policy_version == 1

    metadata = (("authorization", f"Bearer {issued.token}"),)
    allowed = await auth.auth.Authorize(
        apb.AuthorizeRequest(permission=perm.PERMISSION_CHAT), metadata=metadata
    )
    assert (allowed.allowed, allowed.reason) == (True, "ALLOWED")
    scoped = await auth.auth.Authorize(
        apb.AuthorizeRequest(permission=perm.PERMISSION_INGEST), metadata=metadata
    )
    assert (scoped.allowed, scoped.reason) == (False, "SCOPE_EXCLUDED")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key[:-2] + "xx"))
    assert error_details(raised.value).reason == "API_KEY_INVALID"


async def test_a_token_never_outlives_its_api_key(auth: Auth) -> None:
    tenant = await auth.new_tenant()
    await auth.new_user(tenant, "svc")
    expire = timestamp_pb2.Timestamp(seconds=int(time.time()) + 60)
    created = await auth.admin.CreateApiKey(
        tpb.CreateApiKeyRequest(
            tenant_id=tenant, api_key=api_key_pb2.ApiKey(user_id="svc", expire_time=expire)
        ),
        metadata=auth.operator,
    )
    for _ in range(2):  # cold, then from the cache
        issued = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=created.secret))
        assert issued.expire_time.seconds == expire.seconds
        assert jwt.decode(issued.token, options={"verify_signature": False})["exp"] == expire.seconds


async def test_a_warm_authenticate_reuses_its_token_for_half_its_lifetime(
    database_url: str, nats_url: str, signing_key_file: Path
) -> None:
    # Tokens of 3 s: the one issued is handed back (with the response built for it) while 1.5 s is left.
    # Expiry is whole seconds, so the first token has between 2 and 3 s: an immediate second call always
    # reuses it, and 1.6 s later it always has less than 1.5 s left.
    async with running_auth(database_url, nats_url, signing_key_file, auth_token_ttl_seconds=3) as auth:
        tenant = await auth.new_tenant()
        await auth.new_user(tenant, "svc", groups=("finance",))
        _, key = await auth.new_key(tenant, "svc")
        request = apb.AuthenticateRequest(api_key=key)

        first = await auth.auth.Authenticate(request)
        again = await auth.auth.Authenticate(request)
        assert again == first
        await asyncio.sleep(1.6)
        renewed = await auth.auth.Authenticate(request)
        assert renewed.token != first.token
        assert renewed.expire_time.seconds > first.expire_time.seconds
        assert renewed.principal == first.principal and renewed.principal.groups == ["finance"]
        claims = jwt.decode(renewed.token, options={"verify_signature": False})
        assert claims["exp"] == renewed.expire_time.seconds


async def test_identity_cache_hits_are_counted(auth: Auth) -> None:
    tenant = await auth.new_tenant()
    await auth.new_user(tenant, "svc")
    _, key = await auth.new_key(tenant, "svc")

    def count(result: str) -> float:
        value = REGISTRY.get_sample_value(
            "parapet_cache_lookups_total", {"cache": "auth_identity", "result": result}
        )
        return value or 0.0

    hits, misses = count("hit"), count("miss")
    for _ in range(3):
        await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key))
    assert (count("miss") - misses, count("hit") - hits) == (1, 2)
