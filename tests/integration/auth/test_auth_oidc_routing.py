"""OIDC tokens route to a tenant by (issuer, audience): tenants sharing one identity provider (Google, a
multi-tenant Entra app, a shared Auth0 domain) each sign their own users in, a token naming audiences of two
tenants goes to neither, and an (issuer, audience) pair belongs to one tenant at most."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import jwt
import pytest

from parapet.auth.v1 import auth_service_pb2 as apb
from parapet.auth.v1 import permission_pb2 as perm
from parapet.auth.v1 import tenant_admin_service_pb2 as tpb
from parapet.auth.v1 import tenant_policy_pb2
from parapet.kit.errors import error_details
from parapet.kit.testing import refusal
from tests.integration.auth.conftest import Auth, IdpKey, JwksServer, make_idp_key

U = grpc.StatusCode.UNAUTHENTICATED


@dataclass
class Shared:
    """One identity provider (its issuer, keys and JWKS URL) that several tenants trust."""

    issuer: str
    key: IdpKey
    server: JwksServer

    def token(self, aud: Any, *, key: IdpKey | None = None, **claims: Any) -> str:
        signing = key or self.key
        now = int(time.time())
        body = {"iss": self.issuer, "aud": aud, "sub": "alice", "iat": now, "exp": now + 300, **claims}
        return jwt.encode(body, signing.private, algorithm=signing.alg, headers={"kid": signing.kid})


@pytest.fixture
async def shared() -> AsyncIterator[Shared]:
    key = make_idp_key("RS256", "google-1")
    server = JwksServer()
    server.document = {"keys": [key.jwk]}
    try:
        yield Shared(f"https://accounts.{uuid.uuid4().hex[:8]}.example", key, server)
    finally:
        server.close()


def _provider(issuer: str, audiences: list[str], **fields: Any) -> tenant_policy_pb2.OidcProvider:
    return tenant_policy_pb2.OidcProvider(issuer=issuer, audiences=audiences, **fields)


async def _trust(
    auth: Auth, tenant_id: str, *providers: tenant_policy_pb2.OidcProvider, **roles: Any
) -> None:
    """The tenant's providers replaced by ``providers``, and ``roles`` (name → permissions) defined."""
    current = (
        await auth.admin.GetTenantPolicy(
            tpb.GetTenantPolicyRequest(tenant_id=tenant_id), metadata=auth.operator
        )
    ).policy
    policy = tenant_policy_pb2.TenantPolicy()
    policy.CopyFrom(current)
    del policy.identity_providers[:]
    policy.identity_providers.extend(providers)
    for role, permissions in roles.items():
        policy.roles.append(tenant_policy_pb2.RoleDefinition(role=role, permissions=permissions))
    await auth.admin.UpdateTenantPolicy(
        tpb.UpdateTenantPolicyRequest(tenant_id=tenant_id, policy=policy, expected_version=current.version),
        metadata=auth.operator,
    )


async def _version(auth: Auth, tenant_id: str) -> int:
    found: tpb.GetTenantPolicyResponse = await auth.admin.GetTenantPolicy(
        tpb.GetTenantPolicyRequest(tenant_id=tenant_id), metadata=auth.operator
    )
    return found.policy.version


async def test_two_tenants_of_one_issuer_each_sign_their_own_users_in(auth: Auth, shared: Shared) -> None:
    acme, globex = await auth.new_tenant("acme"), await auth.new_tenant("globex")
    # Acme takes roles from the token; Globex from its own user rows only.
    await _trust(
        auth,
        acme,
        _provider(shared.issuer, ["acme-app"], jwks_uri=shared.server.url, roles_claim="roles"),
        analyst=[perm.PERMISSION_CHAT],
    )
    await _trust(
        auth,
        globex,
        _provider(shared.issuer, ["globex-app", "globex-cli"], jwks_uri=shared.server.url),
        writer=[perm.PERMISSION_CHAT, perm.PERMISSION_INGEST],
    )
    await auth.new_user(globex, "alice", roles=("writer",))

    to_acme = await auth.auth.Authenticate(
        apb.AuthenticateRequest(oidc_token=shared.token("acme-app", roles=["analyst"]))
    )
    assert (to_acme.principal.tenant_id, list(to_acme.principal.roles)) == (acme, ["analyst"])
    assert list(to_acme.principal.permissions.names) == ["chat"]
    for audience in ("globex-app", ["globex-cli", "somebody-else"]):
        to_globex = await auth.auth.Authenticate(
            apb.AuthenticateRequest(oidc_token=shared.token(audience, roles=["analyst"]))
        )
        # Globex's provider asserts no roles: its alice is its row's writer, never Acme's analyst.
        assert (to_globex.principal.tenant_id, list(to_globex.principal.roles)) == (globex, ["writer"])
        assert list(to_globex.principal.permissions.names) == ["chat", "ingest"]
        assert to_globex.principal.issuer == shared.issuer
    # One issuer's keys at one URL are fetched once, whichever tenant's sign-in asked first.
    assert shared.server.fetches == 1


async def test_a_token_for_audiences_of_two_tenants_goes_to_neither(auth: Auth, shared: Shared) -> None:
    acme, globex = await auth.new_tenant("acme"), await auth.new_tenant("globex")
    await _trust(auth, acme, _provider(shared.issuer, ["acme-app", "acme-cli"], jwks_uri=shared.server.url))
    await _trust(auth, globex, _provider(shared.issuer, ["globex-app"], jwks_uri=shared.server.url))

    for audience in (["acme-app", "globex-app"], ["globex-app", "nobody", "acme-cli"]):
        code, reason, _ = await refusal(
            auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=shared.token(audience)))
        )
        assert (code, reason) == (U, "OIDC_AUDIENCE_AMBIGUOUS"), audience
    # Two audiences of one tenant are no ambiguity.
    both = await auth.auth.Authenticate(
        apb.AuthenticateRequest(oidc_token=shared.token(["acme-app", "acme-cli"]))
    )
    assert both.principal.tenant_id == acme


async def test_a_token_no_tenant_trusts_is_refused_as_before(auth: Auth, shared: Shared) -> None:
    acme = await auth.new_tenant("acme")
    await _trust(auth, acme, _provider(shared.issuer, ["acme-app"], jwks_uri=shared.server.url))
    cases: list[tuple[str, str]] = [
        (shared.token("someone-else"), "OIDC_AUDIENCE_MISMATCH"),
        (shared.token([]), "OIDC_AUDIENCE_MISMATCH"),
        (shared.token(None), "OIDC_AUDIENCE_MISMATCH"),
        (shared.token(["acme-app\x00"]), "OIDC_AUDIENCE_MISMATCH"),  # no column holds NUL: no INTERNAL
        (shared.token({"acme-app": 1}), "OIDC_AUDIENCE_MISMATCH"),
        (shared.token("acme-app", iss="https://unknown.example"), "OIDC_ISSUER_UNKNOWN"),
    ]
    for token, expected in cases:
        code, reason, _ = await refusal(auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=token)))
        assert (code, reason) == (U, expected)


async def test_a_pair_another_tenant_holds_is_refused_naming_no_tenant(auth: Auth, shared: Shared) -> None:
    acme, globex = await auth.new_tenant("acme"), await auth.new_tenant("globex")
    # An audience repeated in one provider is the same pair twice, not a conflict.
    await _trust(auth, acme, _provider(shared.issuer, ["acme-app", "acme-app"], jwks_uri=shared.server.url))
    before = await _version(auth, globex)
    provider = _provider(shared.issuer, ["globex-app", "acme-app"], jwks_uri=shared.server.url)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _trust(auth, globex, provider)
    details = error_details(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "POLICY_INVALID")
    assert details.bad_request is not None
    violations = [(v.field, v.description) for v in details.bad_request.field_violations]
    assert [field for field, _ in violations] == ["policy.identity_providers[0].audiences[1]"]
    # It says the pair is taken, never by whom.
    said = " ".join([details.message, *(d for _, d in violations), str(details.error_info)])
    assert "another tenant" in said and acme not in said
    assert await _version(auth, globex) == before  # nothing of the edit was stored
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=shared.token("acme-app")))
    assert issued.principal.tenant_id == acme  # and the holder still signs in

    # Released by its holder, the pair is free to take; the holder's tokens for it then go to the new tenant.
    await _trust(auth, acme, _provider(shared.issuer, ["acme-app-2"], jwks_uri=shared.server.url))
    await _trust(auth, globex, provider)
    moved = await auth.auth.Authenticate(
        apb.AuthenticateRequest(oidc_token=shared.token("acme-app", sub="bob"))
    )
    assert moved.principal.tenant_id == globex


async def test_each_tenant_verifies_with_its_own_keys_though_they_share_an_issuer(
    auth: Auth, shared: Shared
) -> None:
    """Keys are the provider's of the tenant the token routes to: a tenant whose inline JWKS holds a key of
    the same ``kid`` cannot sign tokens for another tenant's audience of the same issuer."""
    acme, globex = await auth.new_tenant("acme"), await auth.new_tenant("globex")
    own = make_idp_key("RS256", shared.key.kid)  # Globex's own key, under the kid of the shared provider's
    await _trust(auth, acme, _provider(shared.issuer, ["acme-app"], jwks_uri=shared.server.url))
    await _trust(
        auth, globex, _provider(shared.issuer, ["globex-app"], jwks_json=json.dumps({"keys": [own.jwk]}))
    )

    assert (
        await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=shared.token("globex-app", key=own)))
    ).principal.tenant_id == globex
    assert (
        await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=shared.token("acme-app")))
    ).principal.tenant_id == acme
    for token in (
        shared.token("acme-app", key=own, sub="mallory"),
        shared.token("globex-app", sub="mallory"),
    ):
        code, reason, _ = await refusal(auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=token)))
        assert (code, reason) == (U, "OIDC_SIGNATURE_INVALID")


async def test_two_tenants_claiming_one_pair_at_once_get_one_route(auth: Auth, shared: Shared) -> None:
    tenants = [await auth.new_tenant("race") for _ in range(4)]
    provider = _provider(shared.issuer, ["contested"], jwks_uri=shared.server.url)
    results = await asyncio.gather(*(_trust(auth, t, provider) for t in tenants), return_exceptions=True)
    won = [t for t, result in zip(tenants, results, strict=True) if result is None]
    assert len(won) == 1
    for result in results:
        if result is not None:
            assert isinstance(result, grpc.aio.AioRpcError)
            assert error_details(result).reason == "POLICY_INVALID"
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=shared.token("contested")))
    assert issued.principal.tenant_id == won[0]
