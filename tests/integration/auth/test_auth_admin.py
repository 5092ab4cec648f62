"""Admin RPCs: versioned policy with optimistic concurrency, Authorize decisions, paging, validation, throttling."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import jwt
import pytest
from google.protobuf import field_mask_pb2

from parapet.auth.v1 import api_key_pb2, tenant_pb2, tenant_policy_pb2, user_pb2
from parapet.auth.v1 import auth_service_pb2 as apb
from parapet.auth.v1 import permission_pb2 as perm
from parapet.auth.v1 import tenant_admin_service_pb2 as tpb
from parapet.kit import paging
from parapet.kit.database import Database
from parapet.kit.errors import error_details
from parapet.kit.identity import Principal
from parapet.kit.testing import PAGE_TOKEN_REFUSED, refusal, running
from services.auth.access import Access
from services.auth.app import APP
from services.auth.cache import TenantKeyedCache
from services.auth.store import AuthStore
from tests.integration.auth.conftest import PLATFORM, Auth, auth_settings, make_idp_key, signer_for


async def _policy(auth: Auth, tenant: str, version: int = 0) -> tenant_policy_pb2.TenantPolicy:
    request = tpb.GetTenantPolicyRequest(tenant_id=tenant, version=version)
    response: tpb.GetTenantPolicyResponse = await auth.admin.GetTenantPolicy(request, metadata=auth.operator)
    return response.policy


async def _error(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str | None]:
    code, reason, _fields = await refusal(call)
    return code, reason


def _edit_from_version_1(
    auth: Auth, tenant: str, v1: tenant_policy_pb2.TenantPolicy, max_tokens: int
) -> Awaitable[tpb.UpdateTenantPolicyResponse]:
    """An operator's edit of ``tenant``'s policy from version 1 (``v1``): its roles, a new token limit."""
    policy = tenant_policy_pb2.TenantPolicy(roles=v1.roles)
    policy.models.max_tokens_per_request = max_tokens
    call: Awaitable[tpb.UpdateTenantPolicyResponse] = auth.admin.UpdateTenantPolicy(
        tpb.UpdateTenantPolicyRequest(tenant_id=tenant, policy=policy, expected_version=1),
        metadata=auth.operator,
    )
    return call


async def test_concurrent_policy_edits_one_wins_the_other_aborts(auth: Auth) -> None:
    tenant = await auth.new_tenant()
    v1 = await _policy(auth, tenant)
    assert v1.version == 1 and [r.role for r in v1.roles] == ["admin"]

    results = await asyncio.gather(
        _edit_from_version_1(auth, tenant, v1, 100),
        _edit_from_version_1(auth, tenant, v1, 200),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, tpb.UpdateTenantPolicyResponse)]
    losses = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(wins) == 1 and len(losses) == 1
    assert losses[0].code() == grpc.StatusCode.ABORTED
    details = error_details(losses[0])
    assert details.reason == "POLICY_VERSION_MISMATCH"
    assert wins[0].policy.version == 2 and wins[0].policy.update_subject == "operator"
    # Versions are immutable: version 1 still reads as it was.
    assert (await _policy(auth, tenant, 1)).models.max_tokens_per_request == 0
    assert (await _policy(auth, tenant)).version == 2


async def test_authorize_applies_rbac_scopes_models_and_limits(auth: Auth) -> None:
    tenant = await auth.new_tenant()
    policy = await _policy(auth, tenant)
    policy.roles.append(tenant_policy_pb2.RoleDefinition(role="member", permissions=[perm.PERMISSION_CHAT]))
    policy.models.allowed_models.extend(["fast", "gpt-4o-mini"])
    policy.models.max_tokens_per_request = 1000
    await auth.admin.UpdateTenantPolicy(
        tpb.UpdateTenantPolicyRequest(tenant_id=tenant, policy=policy, expected_version=1),
        metadata=auth.operator,
    )
    member = auth.as_(tenant, "bob", ("member",), groups=("finance",))

    async def decide(
        metadata: Any, permission: perm.Permission.ValueType, model: str = "", max_tokens: int = 0
    ) -> tuple[bool, str, int]:
        answer = await auth.auth.Authorize(
            apb.AuthorizeRequest(permission=permission, model=model, max_tokens=max_tokens),
            metadata=metadata,
        )
        return answer.allowed, answer.reason, answer.policy_version

    assert await decide(member, perm.PERMISSION_CHAT, "fast", 500) == (True, "ALLOWED", 2)
    assert await decide(member, perm.PERMISSION_CHAT, "gpt-5") == (False, "MODEL_NOT_ALLOWED", 2)
    assert await decide(member, perm.PERMISSION_CHAT, "fast", 1001) == (False, "MAX_TOKENS_EXCEEDED", 2)
    assert await decide(member, perm.PERMISSION_DOCUMENTS_READ) == (False, "PERMISSION_MISSING", 2)
    assert await decide(auth.as_(tenant, "x", ("nonexistent",)), perm.PERMISSION_CHAT) == (
        False,
        "PERMISSION_MISSING",
        2,
    )
    effective = await auth.auth.GetEffectivePolicy(apb.GetEffectivePolicyRequest(), metadata=member)
    assert effective.policy.version == 2 and list(effective.policy.models.allowed_models) == [
        "fast",
        "gpt-4o-mini",
    ]
    cached = await auth.auth.GetEffectivePolicy(
        apb.GetEffectivePolicyRequest(known_version=2), metadata=member
    )
    assert cached.not_modified and not cached.HasField("policy")

    await auth.admin.DisableTenant(tpb.DisableTenantRequest(tenant_id=tenant), metadata=auth.operator)
    assert await decide(member, perm.PERMISSION_CHAT, "fast") == (False, "TENANT_DISABLED", 2)


async def test_the_token_carries_what_the_policy_grants_the_roles_narrowed_by_the_scopes(auth: Auth) -> None:
    """Services without the tenant policy decide from the token (parapet.kit.permissions); auth resolves it."""
    tenant = await auth.new_tenant()
    policy = await _policy(auth, tenant)
    policy.roles.append(
        tenant_policy_pb2.RoleDefinition(
            role="member", permissions=[perm.PERMISSION_CHAT, perm.PERMISSION_DOCUMENTS_READ]
        )
    )
    await auth.admin.UpdateTenantPolicy(
        tpb.UpdateTenantPolicyRequest(tenant_id=tenant, policy=policy, expected_version=1),
        metadata=auth.operator,
    )
    await auth.new_user(tenant, "bob", roles=("member",))
    await auth.new_user(tenant, "ann", roles=("admin",))

    async def resolved(user: str, scopes: tuple[str, ...] = ()) -> tuple[str, ...] | None:
        _key_id, key = await auth.new_key(tenant, user, scopes=scopes)
        issued = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key))
        claims = jwt.decode(issued.token, options={"verify_signature": False})
        from_proto = Principal.from_proto(issued.principal).permissions
        assert from_proto == tuple(claims["perm"]), (from_proto, claims)
        return from_proto

    assert await resolved("bob") == ("chat", "documents.read")
    assert await resolved("bob", scopes=("chat", "ingest")) == ("chat",)  # ingest: scoped, but not granted
    admin = await resolved("ann")
    assert admin is not None and {"admin", "documents.delete", "audit.erase", "usage.read"} <= set(admin)
    assert await resolved("ann", scopes=("audit.read",)) == ("audit.read",)


async def test_permissions_come_from_the_policy_version_read_with_the_credential(
    auth: Auth, database_url: str
) -> None:
    """A replica that has not yet heard of a policy change still caches the older view; the permissions it puts
    into a token must not come from a version older than the one the token names (read with the credential)."""
    tenant = await auth.new_tenant()
    database = Database(database_url, "auth")
    try:
        # Another replica's tenant cache, which no change notification reaches in this test.
        replica = Access(AuthStore(database), TenantKeyedCache(100, 3600.0), PLATFORM, asyncio.Event())
        bob = Principal(tenant, "bob", roles=("member",))
        assert (await replica.with_permissions(bob, 1)).permissions == ()  # v1 defines no `member`: cached
        policy = await _policy(auth, tenant)
        policy.roles.append(
            tenant_policy_pb2.RoleDefinition(role="member", permissions=[perm.PERMISSION_DOCUMENTS_READ])
        )
        await auth.admin.UpdateTenantPolicy(
            tpb.UpdateTenantPolicyRequest(tenant_id=tenant, policy=policy, expected_version=1),
            metadata=auth.operator,
        )
        assert (await replica.with_permissions(bob, 1)).permissions == ()  # the cache, as version 1 allows
        assert (await replica.with_permissions(bob, 2)).permissions == ("documents.read",)
        assert (await replica.with_permissions(bob, 1)).permissions == ("documents.read",)  # now cached
    finally:
        await database.close()


async def test_disabled_tenants_are_listed_only_when_asked_for(auth: Auth) -> None:
    active, disabled = await auth.new_tenant(), await auth.new_tenant()
    await auth.admin.DisableTenant(tpb.DisableTenantRequest(tenant_id=disabled), metadata=auth.operator)

    async def listed(show_disabled: bool) -> dict[str, int]:
        states, token = {}, ""
        while True:
            page = await auth.admin.ListTenants(
                tpb.ListTenantsRequest(page_size=1000, page_token=token, show_disabled=show_disabled),
                metadata=auth.operator,
            )
            states.update({t.tenant_id: t.state for t in page.tenants})
            token = page.next_page_token
            if not token:
                return states

    default = await listed(False)
    assert active in default and disabled not in default
    assert set(default.values()) == {tenant_pb2.TENANT_STATE_ACTIVE}
    everything = await listed(True)
    assert everything[disabled] == tenant_pb2.TENANT_STATE_DISABLED and active in everything


async def test_users_keys_and_tenants_page_and_filter(auth: Auth) -> None:
    tenant = await auth.new_tenant()
    for i in range(5):
        await auth.new_user(
            tenant, f"user-{i}", roles=("admin",) if i % 2 else (), groups=("hr",) if i < 2 else ()
        )
    seen: list[str] = []
    token = ""
    while True:
        page = await auth.admin.ListUsers(
            tpb.ListUsersRequest(tenant_id=tenant, page_size=2, page_token=token), metadata=auth.operator
        )
        seen += [u.user_id for u in page.users]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"user-{i}" for i in range(5)]
    admins = await auth.admin.ListUsers(
        tpb.ListUsersRequest(tenant_id=tenant, role="admin"), metadata=auth.operator
    )
    assert [u.user_id for u in admins.users] == ["user-1", "user-3"]
    hr = await auth.admin.ListUsers(
        tpb.ListUsersRequest(tenant_id=tenant, group="hr"), metadata=auth.operator
    )
    assert [u.user_id for u in hr.users] == ["user-0", "user-1"]

    ids = [(await auth.new_key(tenant, "user-0"))[0] for _ in range(3)]
    await auth.admin.RevokeApiKey(
        tpb.RevokeApiKeyRequest(tenant_id=tenant, api_key_id=ids[0]), metadata=auth.operator
    )
    active = await auth.admin.ListApiKeys(tpb.ListApiKeysRequest(tenant_id=tenant), metadata=auth.operator)
    assert [k.api_key_id for k in active.api_keys] == ids[:0:-1]  # newest first, revoked hidden
    first = await auth.admin.ListApiKeys(
        tpb.ListApiKeysRequest(tenant_id=tenant, show_inactive=True, page_size=2), metadata=auth.operator
    )
    rest = await auth.admin.ListApiKeys(
        tpb.ListApiKeysRequest(
            tenant_id=tenant, show_inactive=True, page_size=2, page_token=first.next_page_token
        ),
        metadata=auth.operator,
    )
    listed = list(first.api_keys) + list(rest.api_keys)
    assert [k.api_key_id for k in listed] == ids[::-1] and not rest.next_page_token
    assert listed[-1].state == api_key_pb2.API_KEY_STATE_REVOKED and listed[-1].HasField("revoke_time")

    tenants = await auth.admin.ListTenants(tpb.ListTenantsRequest(page_size=1000), metadata=auth.operator)
    assert {PLATFORM, tenant} <= {t.tenant_id for t in tenants.tenants}
    code, reason = await _error(
        auth.admin.ListUsers(
            tpb.ListUsersRequest(tenant_id=tenant, page_token="garbage"), metadata=auth.operator
        )
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID")


async def test_a_page_token_serves_only_the_listing_and_caller_it_came_from(auth: Auth) -> None:
    tenant = await auth.new_tenant()
    for i in range(3):
        await auth.new_user(tenant, f"user-{i}", roles=("admin",) if i else (), groups=("hr",))
    for _ in range(3):
        await auth.new_key(tenant, "user-1")
    admin, operator = auth.admin, auth.operator
    users = (
        await admin.ListUsers(tpb.ListUsersRequest(tenant_id=tenant, page_size=1), metadata=operator)
    ).next_page_token
    keys = (
        await admin.ListApiKeys(
            tpb.ListApiKeysRequest(tenant_id=tenant, page_size=1, show_inactive=True), metadata=operator
        )
    ).next_page_token
    tenants = (
        await admin.ListTenants(tpb.ListTenantsRequest(page_size=1), metadata=operator)
    ).next_page_token
    assert users and keys and tenants
    # Each token still serves its own listing.
    more = await admin.ListUsers(tpb.ListUsersRequest(tenant_id=tenant, page_token=users), metadata=operator)
    assert [u.user_id for u in more.users] == ["user-1", "user-2"]

    other_tenant = await auth.new_tenant()
    tenant_admin = auth.as_(tenant, "root", ("admin",))
    other_operator = auth.as_(PLATFORM, "operator-2", ("platform-admin",))
    # A keyset position that does not parse, in a token otherwise bound right: refused, not a database error.
    bad_position = tpb.ListApiKeysRequest(tenant_id=tenant, show_inactive=True)
    bound = paging.query_key(bad_position, bad_position.DESCRIPTOR.full_name, PLATFORM, "operator")
    bad_position.page_token = paging.encode(["yesterday", "not-a-uuid"], bound)
    users_by = tpb.ListUsersRequest
    keys_by = tpb.ListApiKeysRequest
    refused: list[tuple[str, Awaitable[Any]]] = [
        (
            "other role",
            admin.ListUsers(users_by(tenant_id=tenant, page_token=users, role="admin"), metadata=operator),
        ),
        (
            "other group",
            admin.ListUsers(users_by(tenant_id=tenant, page_token=users, group="hr"), metadata=operator),
        ),
        (
            "other tenant",
            admin.ListUsers(users_by(tenant_id=other_tenant, page_token=users), metadata=operator),
        ),
        (
            "other caller",
            admin.ListUsers(users_by(tenant_id=tenant, page_token=users), metadata=tenant_admin),
        ),
        (
            "active keys only",
            admin.ListApiKeys(keys_by(tenant_id=tenant, page_token=keys), metadata=operator),
        ),
        (
            "one user's keys",
            admin.ListApiKeys(
                keys_by(tenant_id=tenant, page_token=keys, show_inactive=True, user_id="user-1"),
                metadata=operator,
            ),
        ),
        ("a users token", admin.ListApiKeys(keys_by(tenant_id=tenant, page_token=users), metadata=operator)),
        ("a position that is no key", admin.ListApiKeys(bad_position, metadata=operator)),
        (
            "disabled ones too",
            admin.ListTenants(
                tpb.ListTenantsRequest(page_token=tenants, show_disabled=True), metadata=operator
            ),
        ),
        (
            "other operator",
            admin.ListTenants(tpb.ListTenantsRequest(page_token=tenants), metadata=other_operator),
        ),
    ]
    for case, call in refused:
        assert await refusal(call) == PAGE_TOKEN_REFUSED, case


async def test_a_tenant_admin_manages_its_own_tenant(auth: Auth) -> None:
    tenant = await auth.new_tenant()
    admin = auth.as_(tenant, "root", ("admin",))
    await auth.admin.CreateUser(
        tpb.CreateUserRequest(tenant_id=tenant, user=user_pb2.User(user_id="carol", groups=["finance"])),
        metadata=admin,
    )
    updated = await auth.admin.UpdateUser(
        tpb.UpdateUserRequest(
            tenant_id=tenant,
            user=user_pb2.User(
                user_id="carol", roles=["admin"], groups=["finance", "hr"], display_name="Carol"
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["roles", "groups"]),
        ),
        metadata=admin,
    )
    assert list(updated.user.roles) == ["admin"] and list(updated.user.groups) == ["finance", "hr"]
    assert updated.user.display_name == ""  # not in the mask: unchanged
    got = await auth.admin.GetTenant(tpb.GetTenantRequest(tenant_id=tenant), metadata=admin)
    assert got.tenant.state == tenant_pb2.TENANT_STATE_ACTIVE
    created = await auth.admin.CreateApiKey(
        tpb.CreateApiKeyRequest(tenant_id=tenant, api_key=api_key_pb2.ApiKey(user_id="carol")), metadata=admin
    )
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=created.secret))
    assert list(issued.principal.groups) == ["finance", "hr"]

    assert await _error(
        auth.admin.CreateUser(
            tpb.CreateUserRequest(tenant_id=tenant, user=user_pb2.User(user_id="carol")), metadata=admin
        )
    ) == (grpc.StatusCode.ALREADY_EXISTS, "USER_ALREADY_EXISTS")
    assert await _error(
        auth.admin.CreateTenant(
            tpb.CreateTenantRequest(tenant=tenant_pb2.Tenant(tenant_id=tenant, display_name="again")),
            metadata=auth.operator,
        )
    ) == (grpc.StatusCode.ALREADY_EXISTS, "TENANT_ALREADY_EXISTS")
    assert await _error(
        auth.admin.CreateUser(
            tpb.CreateUserRequest(tenant_id=tenant, user=user_pb2.User(user_id="dan", roles=["ghost"])),
            metadata=admin,
        )
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_INVALID")
    assert await _error(
        auth.admin.GetUser(tpb.GetUserRequest(tenant_id=tenant, user_id="nobody"), metadata=admin)
    ) == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")


async def test_invalid_policies_are_refused_with_field_violations(auth: Auth) -> None:
    tenant = await auth.new_tenant()
    other = await auth.new_tenant()
    policy = await _policy(auth, tenant)
    bad = tenant_policy_pb2.TenantPolicy(roles=policy.roles)
    bad.roles.add(role="Bad Name")
    bad.budgets.add(budget_id="monthly")  # no scope, window or limit
    bad.identity_providers.add(
        issuer="https://idp.example/", audiences=["x"], jwks_uri="http://idp.example/jwks"
    )
    bad.identity_providers[0].allowed_algorithms.append("HS256")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth.admin.UpdateTenantPolicy(
            tpb.UpdateTenantPolicyRequest(tenant_id=tenant, policy=bad, expected_version=1),
            metadata=auth.operator,
        )
    details = error_details(raised.value)
    assert details.reason == "POLICY_INVALID" and details.bad_request is not None
    fields = {v.field for v in details.bad_request.field_violations}
    assert {
        "policy.roles[1].role",
        "policy.budgets[0].scope",
        "policy.budgets[0].window",
        "policy.budgets[0].limit",
        "policy.identity_providers[0].jwks_uri",
        "policy.identity_providers[0].allowed_algorithms[0]",
    } <= fields

    # An (issuer, audience) pair routes to exactly one tenant (test_auth_oidc_routing: the rest).
    provider = tenant_policy_pb2.OidcProvider(
        issuer="https://shared.example/",
        audiences=["a"],
        jwks_json=json.dumps({"keys": [make_idp_key("EdDSA", "shared").jwk]}),
    )
    first = tenant_policy_pb2.TenantPolicy(roles=policy.roles, identity_providers=[provider])
    await auth.admin.UpdateTenantPolicy(
        tpb.UpdateTenantPolicyRequest(tenant_id=tenant, policy=first, expected_version=1),
        metadata=auth.operator,
    )
    assert await _error(
        auth.admin.UpdateTenantPolicy(
            tpb.UpdateTenantPolicyRequest(tenant_id=other, policy=first, expected_version=1),
            metadata=auth.operator,
        )
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "POLICY_INVALID")
    assert (await _policy(auth, other)).version == 1


async def test_repeated_failures_for_one_prefix_are_throttled(auth: Auth) -> None:
    tenant = await auth.new_tenant()
    await auth.new_user(tenant, "svc")
    _, key = await auth.new_key(tenant, "svc")
    prefix = key.split("_")[1]
    wrong = f"pk_{prefix}_{'Z' * 43}"
    reasons = []
    for _ in range(11):
        reasons.append(await _error(auth.auth.Authenticate(apb.AuthenticateRequest(api_key=wrong))))
    assert reasons[:10] == [(grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID")] * 10
    assert reasons[10] == (grpc.StatusCode.RESOURCE_EXHAUSTED, "AUTHENTICATION_THROTTLED")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=wrong))
    details = error_details(raised.value)
    assert details.reason == "AUTHENTICATION_THROTTLED" and details.retry_after is not None
    assert 0 < details.retry_after <= 60
    # The right secret is not locked out by others' guesses (test_auth_key_throttle.py).
    await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key))


async def test_the_first_start_writes_a_bootstrap_operator_key(
    database_url: str, nats_url: str, signing_key_file: Path, tmp_path: Path
) -> None:
    platform = f"ops-{uuid.uuid4().hex[:8]}"
    key_file = tmp_path / "operator.key"
    settings = auth_settings(
        database_url,
        nats_url,
        signing_key_file,
        auth_platform_tenant_id=platform,
        auth_bootstrap_key_file=key_file,
    )
    async with (
        running(APP, settings) as (_server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        auth = Auth(channel, signer_for(signing_key_file))
        assert key_file.stat().st_mode & 0o777 == 0o600
        issued = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key_file.read_text().strip()))
        assert (issued.principal.tenant_id, issued.principal.subject) == (platform, "operator")
        metadata = (("authorization", f"Bearer {issued.token}"),)
        listed = await auth.admin.ListTenants(tpb.ListTenantsRequest(page_size=1000), metadata=metadata)
        assert platform in {t.tenant_id for t in listed.tenants}
    key_file.unlink()
    async with running(APP, settings):
        assert not key_file.exists()  # later starts create nothing


async def test_repeated_failures_from_one_client_are_throttled_whatever_the_key(auth: Auth) -> None:
    metadata = (("x-parapet-client-ip", "203.0.113.7"),)
    for i in range(50):
        # Twelve prefixes, each under its own limit of 10: only the client's limit (50) can trip.
        guess = f"pk_{'abcdefghijkl'[i % 12] * 12}_{str(i).rjust(43, 'Q')}"
        code, reason = await _error(
            auth.auth.Authenticate(apb.AuthenticateRequest(api_key=guess), metadata=metadata)
        )
        assert reason == "API_KEY_INVALID", i
    code, reason = await _error(
        auth.auth.Authenticate(
            apb.AuthenticateRequest(api_key="pk_" + "m" * 12 + "_" + "Q" * 43), metadata=metadata
        )
    )
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "AUTHENTICATION_THROTTLED")
    other_client = (("x-parapet-client-ip", "198.51.100.1"),)
    code, reason = await _error(
        auth.auth.Authenticate(
            apb.AuthenticateRequest(api_key="pk_" + "m" * 12 + "_" + "Q" * 43), metadata=other_client
        )
    )
    assert reason == "API_KEY_INVALID"  # another client is not affected


async def test_a_user_id_longer_than_any_user_has_is_invalid_argument(auth: Auth) -> None:
    # No user id is longer than 255 characters (CreateUser's bound). A longer one was looked up and its
    # NOT_FOUND named it back (`users/<id>` in ErrorInfo): past gRPC's 16 KiB metadata limit the client got
    # RESOURCE_EXHAUSTED "Stream removed" and no details, for a plain bad argument, until 2026-12-06.
    tenant = await auth.new_tenant()
    long_id = "u" * 20_000
    calls = {
        "user_id": auth.admin.GetUser(
            tpb.GetUserRequest(tenant_id=tenant, user_id=long_id), metadata=auth.operator
        ),
        "user.user_id": auth.admin.UpdateUser(
            tpb.UpdateUserRequest(
                tenant_id=tenant,
                user=user_pb2.User(user_id=long_id, display_name="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=auth.operator,
        ),
        "api_key.user_id": auth.admin.CreateApiKey(
            tpb.CreateApiKeyRequest(tenant_id=tenant, api_key=api_key_pb2.ApiKey(user_id=long_id)),
            metadata=auth.operator,
        ),
    }
    for field, call in calls.items():
        assert await refusal(call) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_INVALID", [field]), field


async def test_a_losing_policy_edit_names_the_version_that_won(auth: Auth) -> None:
    """Edits racing from one version: every loser's ``metadata.current_version`` is the version stored now (the
    one to re-base on), also when it lost at the insert, after its own check had read the older version."""
    tenant = await auth.new_tenant()
    v1 = await _policy(auth, tenant)

    results = await asyncio.gather(
        *(_edit_from_version_1(auth, tenant, v1, 100 + i) for i in range(8)), return_exceptions=True
    )
    wins = [r for r in results if isinstance(r, tpb.UpdateTenantPolicyResponse)]
    losses = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(wins) == 1 and len(losses) == 7
    for loss in losses:
        details = error_details(loss)
        assert (loss.code(), details.reason) == (grpc.StatusCode.ABORTED, "POLICY_VERSION_MISMATCH")
        assert details.error_info is not None and details.error_info.metadata["current_version"] == "2"


async def test_an_update_of_the_state_naming_no_state_is_refused_not_an_enable(auth: Auth) -> None:
    """A mask naming ``state`` with the state left unspecified says nothing of what to set: INVALID_ARGUMENT on
    ``user.state``, and a disabled user stays disabled (it was silently enabled)."""
    tenant = await auth.new_tenant()
    await auth.new_user(tenant, "svc")

    def set_state(state: user_pb2.UserState.ValueType) -> Awaitable[tpb.UpdateUserResponse]:
        call: Awaitable[tpb.UpdateUserResponse] = auth.admin.UpdateUser(
            tpb.UpdateUserRequest(
                tenant_id=tenant,
                user=user_pb2.User(user_id="svc", state=state),
                update_mask=field_mask_pb2.FieldMask(paths=["state"]),
            ),
            metadata=auth.operator,
        )
        return call

    assert (await set_state(user_pb2.USER_STATE_DISABLED)).user.state == user_pb2.USER_STATE_DISABLED
    assert await refusal(set_state(user_pb2.USER_STATE_UNSPECIFIED)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_INVALID",
        ["user.state"],
    )
    stored = await auth.admin.GetUser(
        tpb.GetUserRequest(tenant_id=tenant, user_id="svc"), metadata=auth.operator
    )
    assert stored.user.state == user_pb2.USER_STATE_DISABLED
    assert (await set_state(user_pb2.USER_STATE_ACTIVE)).user.state == user_pb2.USER_STATE_ACTIVE


async def test_the_platform_policy_keeps_its_platform_admin_role(auth: Auth, database_url: str) -> None:
    """An edit of the platform tenant's policy that drops ``platform-admin`` or its ``platform.admin`` is refused
    (INVALID_ARGUMENT ``POLICY_INVALID`` on the role) and the operator still administers: stored, it left no
    role that can hold platform administration, so no credential (nor ``parapet bootstrap operator --replace``,
    whose account has that role) could ever create, list or disable a tenant again, short of editing the
    database. Other edits of the platform policy still pass."""
    import psycopg

    from services.auth.invalidation import libpq_url

    before = await _policy(auth, PLATFORM)
    try:
        without_role = tenant_policy_pb2.TenantPolicy()
        without_role.CopyFrom(before)
        kept = [r for r in before.roles if r.role != "platform-admin"]
        del without_role.roles[:]
        without_role.roles.extend(kept)
        cut_down = tenant_policy_pb2.TenantPolicy()
        cut_down.CopyFrom(before)
        place = next(i for i, r in enumerate(cut_down.roles) if r.role == "platform-admin")
        kept_permissions = [
            p for p in cut_down.roles[place].permissions if p != perm.PERMISSION_PLATFORM_ADMIN
        ]
        del cut_down.roles[place].permissions[:]
        cut_down.roles[place].permissions.extend(kept_permissions)
        for edit, field in ((without_role, "policy.roles"), (cut_down, f"policy.roles[{place}].permissions")):
            code, reason, fields = await refusal(
                auth.admin.UpdateTenantPolicy(
                    tpb.UpdateTenantPolicyRequest(
                        tenant_id=PLATFORM, policy=edit, expected_version=before.version
                    ),
                    metadata=auth.operator,
                )
            )
            assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "POLICY_INVALID", [field])
        assert (await _policy(auth, PLATFORM)).version == before.version
        await auth.admin.ListTenants(tpb.ListTenantsRequest(), metadata=auth.operator)
        # Any other edit of the platform policy still passes.
        other = tenant_policy_pb2.TenantPolicy()
        other.CopyFrom(before)
        other.models.max_tokens_per_request = 1234
        await auth.admin.UpdateTenantPolicy(
            tpb.UpdateTenantPolicyRequest(tenant_id=PLATFORM, policy=other, expected_version=before.version),
            metadata=auth.operator,
        )
    finally:
        # The platform policy as it was, for the tests after this one (on the old code the edit locked it).
        async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
            await conn.execute(
                "DELETE FROM auth.policies WHERE tenant_id = %s AND version > %s", (PLATFORM, before.version)
            )
            await conn.commit()
