"""OIDC tokens of a tenant's identity provider: RS256, ES256 and EdDSA, claim mapping, key rotation by kid."""

from __future__ import annotations

import json
import time

import grpc
import grpc.aio
import jwt
import pytest

from parapet.auth.v1 import auth_service_pb2 as apb
from parapet.auth.v1 import permission_pb2 as perm
from parapet.auth.v1 import tenant_admin_service_pb2 as tpb
from parapet.auth.v1 import tenant_policy_pb2
from parapet.identity.v1 import principal_pb2
from parapet.kit.errors import error_details
from parapet.kit.testing import refusal
from tests.integration.auth.conftest import Auth, Idp, make_idp_key


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_each_allowed_algorithm_authenticates_with_mapped_claims(
    auth: Auth, idp: Idp, alg: str
) -> None:
    token = idp.token(alg, jti="external-1")
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=token))
    principal = issued.principal
    assert (principal.tenant_id, principal.subject) == (idp.tenant_id, "alice")
    assert list(principal.roles) == ["analyst"] and list(principal.groups) == ["finance"]
    assert principal.credential_type == principal_pb2.CREDENTIAL_TYPE_OIDC_TOKEN
    assert principal.issuer == idp.issuer and principal.external_token_id == "external-1"
    assert issued.policy_version == 2

    metadata = (("authorization", f"Bearer {issued.token}"),)
    chat = await auth.auth.Authorize(apb.AuthorizeRequest(permission=perm.PERMISSION_CHAT), metadata=metadata)
    assert chat.allowed
    ingest = await auth.auth.Authorize(
        apb.AuthorizeRequest(permission=perm.PERMISSION_INGEST), metadata=metadata
    )
    assert (ingest.allowed, ingest.reason) == (False, "PERMISSION_MISSING")


async def test_a_rotated_key_is_fetched_on_its_unknown_kid(auth: Auth, idp: Idp) -> None:
    await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token("RS256")))
    fetched = idp.server.fetches
    rotated = make_idp_key("RS256", "rs256-2")
    idp.server.document = {"keys": [rotated.jwk]}
    idp.keys["RS256"] = rotated
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token("RS256")))
    assert issued.principal.subject == "alice"
    assert idp.server.fetches == fetched + 1
    # A known kid is served from the cache: no fetch per token.
    await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token("RS256", sub="bob")))
    assert idp.server.fetches == fetched + 1


async def test_an_inline_jwks_and_a_custom_subject_claim(auth: Auth, idp: Idp) -> None:
    key = make_idp_key("EdDSA", "inline-1")
    current = await auth.admin.GetTenantPolicy(
        tpb.GetTenantPolicyRequest(tenant_id=idp.tenant_id), metadata=auth.operator
    )
    policy = tenant_policy_pb2.TenantPolicy()
    policy.CopyFrom(current.policy)
    issuer = f"https://corp.{idp.tenant_id}.example/"
    policy.identity_providers.append(
        tenant_policy_pb2.OidcProvider(
            issuer=issuer,
            audiences=["parapet-corp"],
            jwks_json=json.dumps({"keys": [key.jwk]}),
            allowed_algorithms=["EdDSA"],
            subject_claim="email",
        )
    )
    await auth.admin.UpdateTenantPolicy(
        tpb.UpdateTenantPolicyRequest(
            tenant_id=idp.tenant_id, policy=policy, expected_version=current.policy.version
        ),
        metadata=auth.operator,
    )
    now = int(time.time())
    token = jwt.encode(
        {"iss": issuer, "aud": "parapet-corp", "sub": "0042", "email": "dana@corp.example", "exp": now + 60},
        key.private,
        algorithm="EdDSA",
        headers={"kid": "inline-1"},
    )
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=token))
    assert (issued.principal.tenant_id, issued.principal.subject) == (idp.tenant_id, "dana@corp.example")
    assert issued.principal.issuer == issuer and list(issued.principal.roles) == []


async def test_an_unreachable_jwks_url_is_unavailable_not_a_verdict(auth: Auth, idp: Idp) -> None:
    url = idp.server.url
    idp.server.close()  # nothing listens there any more, and nothing was fetched yet
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token("RS256")))
    details = error_details(raised.value)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE and details.reason == "DEPENDENCY_UNAVAILABLE"
    assert details.retry_after is not None and url.startswith("http://127.0.0.1")


async def test_a_jwks_url_serving_no_jwks_document_is_unavailable_not_internal(auth: Auth, idp: Idp) -> None:
    good = idp.server.document
    # Valid JSON, but not an object with a list of key objects under "keys": a failed fetch, like no answer.
    for document in ([1, 2], {"issuer": idp.issuer}, {"keys": {"kid": "rs256-1"}}, {"keys": [1, 2]}):
        idp.server.document = document
        code, reason, _ = await refusal(
            auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token()))
        )
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE"), document
    idp.server.document = good  # nothing bad was cached: the provider's keys work as soon as it serves them
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token()))
    assert issued.principal.subject == "alice"
