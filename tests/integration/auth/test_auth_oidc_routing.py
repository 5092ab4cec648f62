"""OIDC tokens route to a tenant by (issuer, audience): tenants sharing one identity provider (Google, a
multi-tenant Entra app, a shared Auth0 domain) each sign their own users in, a token naming audiences of two
tenants goes to the one its ``azp`` names or to neither, an (issuer, audience) pair belongs to one tenant at most,
and tenants' edits claiming each other's pairs never deadlock."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc
import jwt
import psycopg
import pytest

from parapet.auth.v1 import auth_service_pb2 as apb
from parapet.auth.v1 import permission_pb2 as perm
from parapet.auth.v1 import tenant_admin_service_pb2 as tpb
from parapet.auth.v1 import tenant_policy_pb2
from parapet.kit import timeouts
from parapet.kit.errors import error_details
from parapet.kit.testing import refusal
from services.auth.invalidation import libpq_url
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


async def test_a_generic_audience_of_another_tenant_yields_to_the_authorized_party(
    auth: Auth, shared: Shared, caplog: pytest.LogCaptureFixture
) -> None:
    """Keycloak puts ``account`` in every access token's ``aud`` (Auth0 its ``/userinfo`` URL): a tenant that
    registers that generic audience must not cut off another tenant's sign-ins. The token's ``azp`` names the
    client it was issued to, and the tenant holding that client routes it; the operator is told who collides."""
    acme, globex = await auth.new_tenant("acme"), await auth.new_tenant("globex")
    await _trust(auth, acme, _provider(shared.issuer, ["acme-app", "acme-api"], jwks_uri=shared.server.url))
    await _trust(
        auth, globex, _provider(shared.issuer, ["account", "globex-app"], jwks_uri=shared.server.url)
    )

    caplog.set_level(logging.WARNING, logger="services.auth.authenticator")
    # azp among the audiences (Keycloak with an audience mapper), or the tenant's API as the audience.
    for aud, azp in ((["account", "acme-app"], "acme-app"), (["account", "acme-api"], "acme-app")):
        issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=shared.token(aud, azp=azp)))
        assert issued.principal.tenant_id == acme, (aud, azp)
    # Globex's own tokens still go to Globex (no ambiguity there: both audiences are its own).
    for globex_aud in (["account", "globex-app"], "account"):
        issued = await auth.auth.Authenticate(
            apb.AuthenticateRequest(oidc_token=shared.token(globex_aud, azp="globex-app"))
        )
        assert issued.principal.tenant_id == globex, globex_aud
    seen = _ambiguities(caplog)
    assert len(seen) == 2  # every ambiguity is logged, resolved ones too, naming both tenants
    for record in seen:
        assert (record.__dict__["issuer"], sorted(record.__dict__["tenants"])) == (
            shared.issuer,
            sorted([acme, globex]),
        )
        assert record.__dict__["routed_to"] == acme
    # Verification stays the routed tenant's: a token for Acme's client signed by another key is refused.
    forged = shared.token(["account", "acme-app"], azp="acme-app", key=make_idp_key("RS256", shared.key.kid))
    code, reason, _ = await refusal(auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=forged)))
    assert (code, reason) == (U, "OIDC_SIGNATURE_INVALID")


def _ambiguities(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.getMessage() == "an OIDC token's audiences belong to more than one tenant"
    ]


async def test_an_ambiguity_the_authorized_party_does_not_settle_is_still_refused(
    auth: Auth, shared: Shared, caplog: pytest.LogCaptureFixture
) -> None:
    acme, globex, initech = [await auth.new_tenant(t) for t in ("acme", "globex", "initech")]
    await _trust(auth, acme, _provider(shared.issuer, ["acme-app"], jwks_uri=shared.server.url))
    await _trust(auth, globex, _provider(shared.issuer, ["account"], jwks_uri=shared.server.url))
    await _trust(auth, initech, _provider(shared.issuer, ["initech-app"], jwks_uri=shared.server.url))

    caplog.set_level(logging.WARNING, logger="services.auth.authenticator")
    cases: list[dict[str, Any]] = [
        {},  # no azp: nothing tells the tenants apart
        {"azp": "somebody-else"},  # a client no tenant holds
        {"azp": "initech-app"},  # a tenant the token's audiences do not name
        {"azp": ["acme-app"]},  # not a string
        {"azp": "acme-app\x00"},  # nothing a policy could name
    ]
    for claims in cases:
        token = shared.token(["account", "acme-app"], **claims)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=token))
        details = error_details(raised.value)
        assert (details.code, details.reason) == (U, "OIDC_AUDIENCE_AMBIGUOUS"), claims
        said = f"{details.message} {details.error_info}"
        assert acme not in said and globex not in said  # the caller learns no tenant
    seen = _ambiguities(caplog)
    assert len(seen) == len(cases)
    for record in seen:
        assert (record.__dict__["issuer"], sorted(record.__dict__["tenants"])) == (
            shared.issuer,
            sorted([acme, globex]),
        )
        assert record.__dict__["routed_to"] == ""


async def _lock_waits(database_url: str) -> int:
    """How many transactions wait for a lock on a routing row."""
    async with await psycopg.AsyncConnection.connect(libpq_url(database_url), autocommit=True) as conn:
        found = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE '%INSERT INTO oidc_issuers%'"
        )
        row = await found.fetchone()
    assert row is not None
    return int(row[0])


async def _past_a_gate(
    database_url: str,
    gate: tuple[str, str, str],
    first: Coroutine[Any, Any, None],
    second: Coroutine[Any, Any, None],
) -> list[BaseException | None]:
    """``first`` and ``second`` (policy edits) caught part-way, as they would be by chance: a third transaction
    holds the routing row ``gate`` (issuer, audience, tenant) that ``first`` claims, so ``first`` waits there;
    ``second`` then runs until it waits too (or ends); the gate is released and both finish."""
    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as holder:
        await holder.execute(
            "INSERT INTO auth.oidc_issuers (issuer, audience, tenant_id) VALUES (%s, %s, %s)", gate
        )

        async def waits(count: int, task: asyncio.Task[None] | None = None) -> None:
            while True:
                if await _lock_waits(database_url) >= count or (task is not None and task.done()):
                    return
                await asyncio.sleep(0.02)

        one = asyncio.create_task(first)
        await timeouts.within(10, waits(1))
        other = asyncio.create_task(second)
        await timeouts.within(10, waits(2, other))
        await holder.rollback()  # the gate is free: the first edit goes on to the pairs the second wants
    results = await asyncio.gather(one, other, return_exceptions=True)
    return [r if isinstance(r, BaseException) else None for r in results]


def _invalid_field(result: BaseException | None) -> str:
    """The field a POLICY_INVALID refusal names."""
    assert isinstance(result, grpc.aio.AioRpcError), result
    details = error_details(result)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "POLICY_INVALID"), details
    assert details.bad_request is not None
    [violation] = details.bad_request.field_violations
    return str(violation.field)


async def test_two_tenants_claiming_pairs_in_opposite_orders_never_deadlock(
    auth: Auth, shared: Shared, database_url: str
) -> None:
    """Each edit inserted its pairs in the order its policy listed them: Acme holding ``a`` and waiting for
    ``c`` while Globex holds ``c`` and waits for ``a`` is a deadlock, and PostgreSQL aborted one edit
    (ABORTED ``CONCURRENT_CONFLICT``) for what is a plain conflict over a pair."""
    acme, globex, holder = [await auth.new_tenant(t) for t in ("acme", "globex", "holder")]
    url = shared.server.url
    results = await _past_a_gate(
        database_url,
        (shared.issuer, "b-gate", holder),
        _trust(auth, acme, _provider(shared.issuer, ["a-first", "b-gate", "c-last"], jwks_uri=url)),
        _trust(auth, globex, _provider(shared.issuer, ["c-last", "a-first"], jwks_uri=url)),
    )
    assert results[0] is None, results[0]
    # The refusal names the first taken pair in Globex's own order, not in the order they were inserted.
    assert _invalid_field(results[1]) == "policy.identity_providers[0].audiences[0]"
    for audience in ("a-first", "b-gate", "c-last"):
        issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=shared.token(audience)))
        assert issued.principal.tenant_id == acme


async def test_a_tenant_moving_to_a_pair_another_claims_with_its_old_one_never_deadlocks(
    auth: Auth, shared: Shared, database_url: str
) -> None:
    """Acme moves from ``d-old`` to ``c-new`` while Globex claims both. Each edit deleted its tenant's pairs
    before inserting any, so inserting in sorted order alone still deadlocked: Acme had released ``d-old``
    (Globex waiting on it) and then waited for ``c-new``, which Globex had inserted."""
    acme, globex, holder = [await auth.new_tenant(t) for t in ("acme", "globex", "holder")]
    url = shared.server.url
    await _trust(auth, acme, _provider(shared.issuer, ["d-old"], jwks_uri=url))
    results = await _past_a_gate(
        database_url,
        (shared.issuer, "b-gate", holder),
        _trust(auth, acme, _provider(shared.issuer, ["b-gate", "c-new"], jwks_uri=url)),
        _trust(auth, globex, _provider(shared.issuer, ["c-new", "d-old"], jwks_uri=url)),
    )
    assert results[0] is None, results[0]
    # Acme still held d-old when Globex asked for it.
    assert _invalid_field(results[1]) == "policy.identity_providers[0].audiences[1]"
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=shared.token("c-new")))
    assert issued.principal.tenant_id == acme
    # Released, d-old is free to take.
    await _trust(auth, globex, _provider(shared.issuer, ["d-old"], jwks_uri=url))
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=shared.token("d-old")))
    assert issued.principal.tenant_id == globex
