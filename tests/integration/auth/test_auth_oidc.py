"""OIDC tokens of a tenant's identity provider: RS256, ES256 and EdDSA, claim mapping, key rotation by kid."""

from __future__ import annotations

import pytest

from parapet.auth.v1 import auth_service_pb2 as apb
from parapet.auth.v1 import permission_pb2 as perm
from parapet.identity.v1 import principal_pb2
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
