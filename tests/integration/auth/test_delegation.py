"""IssueDelegatedToken: a platform service account gets fresh tokens for a stored principal, re-checked now."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import grpc.aio
import jwt
import pytest
from google.protobuf import field_mask_pb2

from parapet.auth.v1 import api_key_pb2, permission_pb2, tenant_policy_pb2, user_pb2
from parapet.auth.v1 import auth_service_pb2 as apb
from parapet.auth.v1 import tenant_admin_service_pb2 as tpb
from parapet.kit.errors import error_details
from parapet.kit.identity import Principal
from parapet.kit.testing import refusal_details, running
from services.auth.app import APP
from tests.integration.auth.conftest import PLATFORM, Auth, auth_settings, signer_for


async def _delegate(
    auth: Auth, metadata: object, tenant: str, subject: str, key_id: str
) -> apb.IssueDelegatedTokenResponse:
    request = apb.IssueDelegatedTokenRequest(tenant_id=tenant, subject=subject, api_key_id=key_id)
    response: apb.IssueDelegatedTokenResponse = await auth.auth.IssueDelegatedToken(
        request, metadata=metadata
    )
    return response


async def _refused(
    auth: Auth, metadata: object, tenant: str, subject: str, key_id: str
) -> tuple[grpc.StatusCode, str | None]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _delegate(auth, metadata, tenant, subject, key_id)
    details = error_details(raised.value)
    return details.code, details.reason


async def _delegator(auth: Auth) -> tuple[tuple[str, str], ...]:
    """Metadata of a fresh platform service account holding only the token-delegator role."""
    user_id = f"jobs-{uuid.uuid4().hex[:6]}"
    await auth.new_user(PLATFORM, user_id, roles=("token-delegator",))
    _key_id, key = await auth.new_key(PLATFORM, user_id)
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key))
    return (("authorization", f"Bearer {issued.token}"),)


async def test_a_delegator_gets_a_token_for_the_principal_as_of_now(auth: Auth) -> None:
    tenant = await auth.new_tenant("dlg")
    await auth.new_user(tenant, "alice", roles=("admin",), groups=("finance",))
    key_id, key = await auth.new_key(tenant, "alice", scopes=("chat",))
    submitted = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key))
    delegator = await _delegator(auth)

    issued = await _delegate(auth, delegator, tenant, "alice", key_id)
    principal = Principal.from_proto(issued.principal)
    assert principal == Principal.from_proto(submitted.principal)
    claims = jwt.decode(issued.token, options={"verify_signature": False})
    assert claims["tnt"] == tenant and claims["key"] == key_id
    # What the key may do, resolved as Authenticate resolves it: the admin role narrowed by the key's scope.
    assert principal.permissions == ("chat",) and claims["perm"] == ["chat"]
    assert claims["act"] == {"sub": claims["act"]["sub"], "tnt": PLATFORM} and claims["act"][
        "sub"
    ].startswith("jobs-")
    assert issued.expire_time.seconds == claims["exp"]
    # The token is as good as Authenticate's: Authorize acts on it.
    decision = await auth.auth.Authorize(
        apb.AuthorizeRequest(permission=permission_pb2.PERMISSION_CHAT),
        metadata=(("authorization", f"Bearer {issued.token}"),),
    )
    assert decision.allowed

    # Roles are read now, not remembered: a change of the user shows in the next token.
    await auth.admin.UpdateUser(
        tpb.UpdateUserRequest(
            tenant_id=tenant,
            user=user_pb2.User(user_id="alice", groups=["legal"]),
            update_mask=field_mask_pb2.FieldMask(paths=["groups"]),
        ),
        metadata=auth.operator,
    )
    again = await _delegate(auth, delegator, tenant, "alice", key_id)
    assert tuple(again.principal.groups) == ("legal",)


async def test_revoked_key_disabled_tenant_and_unknown_keys_are_refused(auth: Auth) -> None:
    tenant = await auth.new_tenant("dlg")
    await auth.new_user(tenant, "bob", roles=("admin",))
    key_id, _key = await auth.new_key(tenant, "bob")
    other_id, _other = await auth.new_key(tenant, "bob")
    delegator = await _delegator(auth)

    assert await _refused(auth, delegator, tenant, "mallory", key_id) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "API_KEY_INVALID",
    )
    assert (await _refused(auth, delegator, tenant, "bob", str(uuid.uuid4())))[1] == "API_KEY_INVALID"
    assert (await _refused(auth, delegator, tenant, "bob", "not-a-uuid"))[1] == "API_KEY_INVALID"
    assert (await _refused(auth, delegator, "Bad Tenant", "bob", key_id))[
        0
    ] == grpc.StatusCode.INVALID_ARGUMENT
    assert (await _refused(auth, delegator, tenant, "", key_id))[0] == grpc.StatusCode.INVALID_ARGUMENT

    await auth.admin.RevokeApiKey(
        tpb.RevokeApiKeyRequest(tenant_id=tenant, api_key_id=key_id, reason="leaked"), metadata=auth.operator
    )
    assert await _refused(auth, delegator, tenant, "bob", key_id) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "API_KEY_REVOKED",
    )
    await _delegate(auth, delegator, tenant, "bob", other_id)  # the user's other key still works
    await auth.admin.DisableTenant(
        tpb.DisableTenantRequest(tenant_id=tenant, reason="t"), metadata=auth.operator
    )
    assert (await _refused(auth, delegator, tenant, "bob", other_id))[1] == "TENANT_DISABLED"


async def test_only_holders_of_token_delegate_in_the_platform_tenant_may_delegate(auth: Auth) -> None:
    tenant = await auth.new_tenant("dlg")
    await auth.new_user(tenant, "carol", roles=("admin",))
    key_id, _key = await auth.new_key(tenant, "carol")
    denied = (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_MISSING")
    # A tenant administrator, even of the same tenant; and the platform operator (delegation is not admin).
    assert await _refused(auth, auth.as_(tenant, "carol", ("admin",)), tenant, "carol", key_id) == denied
    assert await _refused(auth, auth.operator, tenant, "carol", key_id) == denied
    # A role named like the platform's in another tenant grants nothing there...
    assert (
        await _refused(auth, auth.as_(tenant, "x", ("token-delegator",)), tenant, "carol", key_id) == denied
    )

    # ...and no tenant policy may grant token.delegate at all.
    current = await auth.admin.GetTenantPolicy(
        tpb.GetTenantPolicyRequest(tenant_id=tenant), metadata=auth.operator
    )
    policy = tenant_policy_pb2.TenantPolicy()
    policy.CopyFrom(current.policy)
    policy.roles.append(
        tenant_policy_pb2.RoleDefinition(
            role="runner", permissions=[permission_pb2.PERMISSION_TOKEN_DELEGATE]
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth.admin.UpdateTenantPolicy(
            tpb.UpdateTenantPolicyRequest(
                tenant_id=tenant, policy=policy, expected_version=current.policy.version
            ),
            metadata=auth.operator,
        )
    assert error_details(raised.value).reason == "PRIVILEGE_ESCALATION"


async def test_the_gateway_service_account_key_is_written_once_and_again_when_missing(
    database_url: str, nats_url: str, signing_key_file: Path, tmp_path: Path
) -> None:
    platform = f"ops-{uuid.uuid4().hex[:8]}"
    key_file = tmp_path / "gateway.key"
    settings = auth_settings(
        database_url,
        nats_url,
        signing_key_file,
        auth_platform_tenant_id=platform,
        auth_gateway_key_file=key_file,
    )
    async with (
        running(APP, settings) as (_server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        auth = Auth(channel, signer_for(signing_key_file))
        assert key_file.stat().st_mode & 0o777 == 0o600
        issued = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key_file.read_text().strip()))
        assert (issued.principal.tenant_id, issued.principal.subject) == (platform, "gateway")
        assert tuple(issued.principal.roles) == ("token-delegator",)
        gateway = (("authorization", f"Bearer {issued.token}"),)
        # It can delegate and do nothing else: no administration.
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await auth.admin.ListTenants(tpb.ListTenantsRequest(page_size=10), metadata=gateway)
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    first_key = key_file.read_text().strip()
    async with running(APP, settings):
        assert key_file.read_text().strip() == first_key  # later starts create nothing
    # A missing file (a new home for the same database) gets a fresh key; the old one stays valid.
    key_file.unlink()
    async with (
        running(APP, settings) as (_server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        second_key = key_file.read_text().strip()
        assert second_key != first_key
        stub = Auth(channel, signer_for(signing_key_file)).auth
        for key in (first_key, second_key):
            again = await stub.Authenticate(apb.AuthenticateRequest(api_key=key))
            assert (again.principal.tenant_id, again.principal.subject) == (platform, "gateway")


async def test_a_platform_policy_from_before_delegation_gains_the_role_once(
    database_url: str, nats_url: str, signing_key_file: Path
) -> None:
    from services.auth import permissions

    platform = f"ops-{uuid.uuid4().hex[:8]}"
    settings = auth_settings(database_url, nats_url, signing_key_file, auth_platform_tenant_id=platform)
    async with (
        running(APP, settings) as (_server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        auth = Auth(channel, signer_for(signing_key_file))
        operator = auth.as_(platform, "operator", ("platform-admin",))
        current = await auth.admin.GetTenantPolicy(
            tpb.GetTenantPolicyRequest(tenant_id=platform), metadata=operator
        )
        # An older platform policy: the delegator role removed.
        old = tenant_policy_pb2.TenantPolicy()
        old.CopyFrom(current.policy)
        del old.roles[:]
        old.roles.extend(r for r in current.policy.roles if r.role != permissions.DELEGATOR_ROLE)
        await auth.admin.UpdateTenantPolicy(
            tpb.UpdateTenantPolicyRequest(
                tenant_id=platform, policy=old, expected_version=current.policy.version
            ),
            metadata=operator,
        )
    for _ in range(2):
        async with (
            running(APP, settings) as (_server, port),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            auth = Auth(channel, signer_for(signing_key_file))
            latest = await auth.admin.GetTenantPolicy(
                tpb.GetTenantPolicyRequest(tenant_id=platform),
                metadata=auth.as_(platform, "operator", ("platform-admin",)),
            )
            assert [r.role for r in latest.policy.roles].count(permissions.DELEGATOR_ROLE) == 1
            assert latest.policy.version == current.policy.version + 2  # one new version, not one per start


async def test_no_platform_principal_can_be_delegated(auth: Auth) -> None:
    # A delegator holds token.delegate and nothing else; until 2026-12-06 it could name an operator's key
    # (its id travels in every token the operator uses) and get a platform-admin token: every tenant's
    # administration, from an account documented as unable to administer anything.
    delegator = await _delegator(auth)
    for roles in (("platform-admin",), ("token-delegator",)):
        user_id = f"ops-{uuid.uuid4().hex[:6]}"
        await auth.new_user(PLATFORM, user_id, roles=roles)
        key_id, _key = await auth.new_key(PLATFORM, user_id)
        assert await _refused(auth, delegator, PLATFORM, user_id, key_id) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "PRIVILEGE_ESCALATION",
        ), roles
    # A platform user holding tenant permissions only (its tenant's `admin`) is delegated as before.
    user_id = f"staff-{uuid.uuid4().hex[:6]}"
    await auth.new_user(PLATFORM, user_id, roles=("admin",))
    key_id, _key = await auth.new_key(PLATFORM, user_id)
    issued = await _delegate(auth, delegator, PLATFORM, user_id, key_id)
    assert issued.principal.subject == user_id


async def test_a_delegated_token_administers_nothing(auth: Auth) -> None:
    """Work run later on a principal's behalf (a job's chats) needs its chat permissions, never its
    administration. Until 2026-12-06 the delegator, which administers nothing, could name a tenant admin's key
    (key ids travel in every token) and, with the delegated token, list and create users and mint keys."""
    tenant = await auth.new_tenant("dlgadm")
    await auth.new_user(tenant, "bob", roles=("admin",))
    key_id, _key = await auth.new_key(tenant, "bob")
    issued = await _delegate(auth, await _delegator(auth), tenant, "bob", key_id)
    delegated = (("authorization", f"Bearer {issued.token}"),)
    assert "admin" in (Principal.from_proto(issued.principal).permissions or ())  # as Authenticate resolves

    for call in (
        auth.admin.ListUsers(tpb.ListUsersRequest(tenant_id=tenant), metadata=delegated),
        auth.admin.CreateApiKey(
            tpb.CreateApiKeyRequest(tenant_id=tenant, api_key=api_key_pb2.ApiKey(user_id="bob")),
            metadata=delegated,
        ),
    ):
        details = await refusal_details(call)
        assert (details.code, details.reason) == (grpc.StatusCode.PERMISSION_DENIED, "DELEGATED_TOKEN")
    # Chat-side permissions still answer on it: it is the principal's, for the work it was issued for.
    decision = await auth.auth.Authorize(
        apb.AuthorizeRequest(permission=permission_pb2.PERMISSION_CHAT), metadata=delegated
    )
    assert decision.allowed
