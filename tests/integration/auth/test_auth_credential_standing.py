"""An internal token acts at auth only while the credential it was issued for still may: the admin RPCs and
IssueDelegatedToken re-read the API key (revoked, expired, user or tenant disabled, current roles) and the OIDC
subject's user row, instead of trusting a token that stays valid for up to 5 minutes after the change.

Before 2026-12-06 a token issued before its key was revoked (a leaked admin key, revoked by the operator)
went on administering until it expired: enough to mint a new key for the same user and outlive the
revocation for good.
"""

from __future__ import annotations

import uuid

import grpc
from google.protobuf import field_mask_pb2

from parapet.auth.v1 import api_key_pb2, permission_pb2, tenant_policy_pb2, user_pb2
from parapet.auth.v1 import auth_service_pb2 as apb
from parapet.auth.v1 import tenant_admin_service_pb2 as tpb
from parapet.kit.testing import refusal
from tests.integration.auth.conftest import PLATFORM, Auth, Idp, Metadata


async def _signed_in(auth: Auth, key: str) -> Metadata:
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key))
    return (("authorization", f"Bearer {issued.token}"),)


async def _keys_of(auth: Auth, tenant: str, user_id: str) -> list[str]:
    listed = await auth.admin.ListApiKeys(
        tpb.ListApiKeysRequest(tenant_id=tenant, user_id=user_id, show_inactive=True), metadata=auth.operator
    )
    return [key.api_key_id for key in listed.api_keys]


def _mint(tenant: str, user_id: str) -> tpb.CreateApiKeyRequest:
    return tpb.CreateApiKeyRequest(tenant_id=tenant, api_key=api_key_pb2.ApiKey(user_id=user_id))


def _disable(tenant: str, user_id: str) -> tpb.UpdateUserRequest:
    return tpb.UpdateUserRequest(
        tenant_id=tenant,
        user=user_pb2.User(user_id=user_id, state=user_pb2.USER_STATE_DISABLED),
        update_mask=field_mask_pb2.FieldMask(paths=["state"]),
    )


async def test_a_revoked_keys_token_can_no_longer_administer(auth: Auth) -> None:
    tenant = await auth.new_tenant()
    await auth.new_user(tenant, "boss", roles=("admin",))
    key_id, key = await auth.new_key(tenant, "boss")
    leaked = await _signed_in(auth, key)
    await auth.admin.ListUsers(tpb.ListUsersRequest(tenant_id=tenant), metadata=leaked)  # works while valid

    await auth.admin.RevokeApiKey(
        tpb.RevokeApiKeyRequest(tenant_id=tenant, api_key_id=key_id, reason="leaked"), metadata=auth.operator
    )
    # The token has minutes left, but its key is gone: minting a successor for the same user would make the
    # revocation moot, and reading the tenant's users is no better.
    assert (await refusal(auth.admin.CreateApiKey(_mint(tenant, "boss"), metadata=leaked)))[:2] == (
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_REVOKED",
    )
    assert (await refusal(auth.admin.ListUsers(tpb.ListUsersRequest(tenant_id=tenant), metadata=leaked)))[
        :2
    ] == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")
    assert await _keys_of(auth, tenant, "boss") == [key_id]


async def test_a_disabled_users_token_can_no_longer_administer(auth: Auth) -> None:
    tenant = await auth.new_tenant()
    await auth.new_user(tenant, "boss", roles=("admin",))
    await auth.new_user(tenant, "helper")
    _, key = await auth.new_key(tenant, "boss")
    token = await _signed_in(auth, key)
    await auth.admin.UpdateUser(_disable(tenant, "boss"), metadata=auth.operator)

    assert (await refusal(auth.admin.CreateApiKey(_mint(tenant, "helper"), metadata=token)))[:2] == (
        grpc.StatusCode.UNAUTHENTICATED,
        "USER_DISABLED",
    )
    assert await _keys_of(auth, tenant, "helper") == []


async def test_a_demoted_users_token_administers_with_the_roles_held_now(auth: Auth) -> None:
    tenant = await auth.new_tenant()
    await auth.set_policy(
        tenant,
        tenant_policy_pb2.TenantPolicy(
            roles=[
                tenant_policy_pb2.RoleDefinition(role="member", permissions=[permission_pb2.PERMISSION_CHAT])
            ]
        ),
    )
    await auth.new_user(tenant, "boss", roles=("admin",))
    await auth.new_user(tenant, "helper", roles=("member",))
    _, key = await auth.new_key(tenant, "boss")
    token = await _signed_in(auth, key)
    await auth.admin.UpdateUser(
        tpb.UpdateUserRequest(
            tenant_id=tenant,
            user=user_pb2.User(user_id="boss", roles=["member"]),
            update_mask=field_mask_pb2.FieldMask(paths=["roles"]),
        ),
        metadata=auth.operator,
    )
    assert (await refusal(auth.admin.CreateApiKey(_mint(tenant, "helper"), metadata=token)))[:2] == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_MISSING",
    )
    assert await _keys_of(auth, tenant, "helper") == []


async def test_a_disabled_oidc_users_token_can_no_longer_administer(auth: Auth, idp: Idp) -> None:
    await auth.new_user(idp.tenant_id, "helper")
    issued = await auth.auth.Authenticate(
        apb.AuthenticateRequest(oidc_token=idp.token(sub="carol", roles=["admin"]))
    )
    token = (("authorization", f"Bearer {issued.token}"),)
    # A row for the subject, disabled by the operator: every sign-in is refused from now on, and so is the token.
    await auth.admin.CreateUser(
        tpb.CreateUserRequest(
            tenant_id=idp.tenant_id, user=user_pb2.User(user_id="carol", state=user_pb2.USER_STATE_DISABLED)
        ),
        metadata=auth.operator,
    )
    assert (await refusal(auth.admin.CreateApiKey(_mint(idp.tenant_id, "helper"), metadata=token)))[:2] == (
        grpc.StatusCode.UNAUTHENTICATED,
        "USER_DISABLED",
    )


async def test_a_revoked_delegators_token_can_no_longer_delegate(auth: Auth) -> None:
    tenant = await auth.new_tenant("dlg")
    await auth.new_user(tenant, "alice", roles=("admin",))
    alice_key_id, _ = await auth.new_key(tenant, "alice", scopes=("chat",))
    account = f"jobs-{uuid.uuid4().hex[:6]}"
    await auth.new_user(PLATFORM, account, roles=("token-delegator",))
    delegator_key_id, delegator_key = await auth.new_key(PLATFORM, account)
    token = await _signed_in(auth, delegator_key)
    request = apb.IssueDelegatedTokenRequest(tenant_id=tenant, subject="alice", api_key_id=alice_key_id)
    await auth.auth.IssueDelegatedToken(request, metadata=token)  # works while its key is valid

    # `parapet bootstrap gateway --replace` after a leak, or RevokeApiKey: the old token must stop at once.
    await auth.admin.RevokeApiKey(
        tpb.RevokeApiKeyRequest(tenant_id=PLATFORM, api_key_id=delegator_key_id), metadata=auth.operator
    )
    assert (await refusal(auth.auth.IssueDelegatedToken(request, metadata=token)))[:2] == (
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_REVOKED",
    )


async def test_tokens_without_a_stored_credential_still_administer(auth: Auth) -> None:
    # The operator's internal token signed with the signing key (no API key, no OIDC subject) has nothing to
    # re-read: it acts by its roles, as before.
    tenant = await auth.new_tenant()
    await auth.new_user(tenant, "svc")
    assert await _keys_of(auth, tenant, "svc") == []
    created = await auth.admin.CreateApiKey(_mint(tenant, "svc"), metadata=auth.operator)
    assert await _keys_of(auth, tenant, "svc") == [created.api_key.api_key_id]


async def test_an_oidc_users_token_administers_with_the_roles_its_row_holds_now(auth: Auth, idp: Idp) -> None:
    # An OIDC principal holds its row's roles and those its provider asserted at the recorded sign-in. Until
    # the fix a demotion through the row counted only from the next sign-in: the token went on minting keys.
    await auth.new_user(idp.tenant_id, "helper")
    await auth.admin.CreateUser(
        tpb.CreateUserRequest(tenant_id=idp.tenant_id, user=user_pb2.User(user_id="dave", roles=["admin"])),
        metadata=auth.operator,
    )
    issued = await auth.auth.Authenticate(
        apb.AuthenticateRequest(oidc_token=idp.token(sub="dave", roles=["analyst"]))
    )
    assert sorted(issued.principal.roles) == ["admin", "analyst"]
    token = (("authorization", f"Bearer {issued.token}"),)
    await auth.admin.ListUsers(tpb.ListUsersRequest(tenant_id=idp.tenant_id), metadata=token)  # an admin now
    await auth.admin.UpdateUser(
        tpb.UpdateUserRequest(
            tenant_id=idp.tenant_id,
            user=user_pb2.User(user_id="dave", roles=["analyst"]),
            update_mask=field_mask_pb2.FieldMask(paths=["roles"]),
        ),
        metadata=auth.operator,
    )
    assert (await refusal(auth.admin.CreateApiKey(_mint(idp.tenant_id, "helper"), metadata=token)))[:2] == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_MISSING",
    )
    assert await _keys_of(auth, idp.tenant_id, "helper") == []


async def test_an_oidc_users_token_can_no_longer_administer_a_disabled_tenant(auth: Auth, idp: Idp) -> None:
    await auth.new_user(idp.tenant_id, "helper")
    issued = await auth.auth.Authenticate(
        apb.AuthenticateRequest(oidc_token=idp.token(sub="erin", roles=["admin"]))
    )
    token = (("authorization", f"Bearer {issued.token}"),)
    await auth.admin.DisableTenant(tpb.DisableTenantRequest(tenant_id=idp.tenant_id), metadata=auth.operator)
    # Told why, as Authenticate tells a new sign-in, not PERMISSION_MISSING as if the user were no admin.
    assert (await refusal(auth.admin.CreateApiKey(_mint(idp.tenant_id, "helper"), metadata=token)))[:2] == (
        grpc.StatusCode.UNAUTHENTICATED,
        "TENANT_DISABLED",
    )
    assert await _keys_of(auth, idp.tenant_id, "helper") == []
