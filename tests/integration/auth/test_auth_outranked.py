"""A tenant admin may act only on those it holds everything of: no revoking a greater admin's keys, no cutting
down, deleting or redefining a role it does not fully hold, no changing the identity providers (which can
assert any role) unless it holds every role. An admin holding all of it, and the platform operator, still may."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from google.protobuf import field_mask_pb2

from parapet.auth.v1 import api_key_pb2, tenant_policy_pb2, user_pb2
from parapet.auth.v1 import auth_service_pb2 as apb
from parapet.auth.v1 import permission_pb2 as perm
from parapet.auth.v1 import tenant_admin_service_pb2 as tpb
from parapet.kit.testing import refusal
from tests.integration.auth.conftest import Auth, Metadata, make_idp_key

ESCALATION = (grpc.StatusCode.PERMISSION_DENIED, "PRIVILEGE_ESCALATION")
Edit = Callable[[tenant_policy_pb2.TenantPolicy], None]


@dataclass
class Ranks:
    """A tenant where ``boss`` holds role admin (every tenant permission), ``hd`` role helpdesk (admin, chat),
    ``aud`` role auditor (audit.read) and ``mia`` role member (chat); each has one API key."""

    tenant: str
    keys: dict[str, tuple[str, str]]  # user -> (api_key_id, full key)

    def key_id(self, user: str) -> str:
        return self.keys[user][0]


async def _ranks(auth: Auth) -> Ranks:
    tenant = await auth.new_tenant()
    await auth.set_policy(
        tenant,
        tenant_policy_pb2.TenantPolicy(
            roles=[
                tenant_policy_pb2.RoleDefinition(
                    role="helpdesk", permissions=[perm.PERMISSION_ADMIN, perm.PERMISSION_CHAT]
                ),
                tenant_policy_pb2.RoleDefinition(role="auditor", permissions=[perm.PERMISSION_AUDIT_READ]),
                tenant_policy_pb2.RoleDefinition(role="member", permissions=[perm.PERMISSION_CHAT]),
            ]
        ),
    )
    users = {"boss": "admin", "hd": "helpdesk", "aud": "auditor", "mia": "member"}
    keys = {}
    for user, role in users.items():
        await auth.new_user(tenant, user, (role,))
        keys[user] = await auth.new_key(tenant, user)
    return Ranks(tenant, keys)


async def _as_key(auth: Auth, key: str) -> Metadata:
    """The internal token Authenticate issues for ``key``, as call metadata: the caller as it really calls."""
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key))
    return (("authorization", f"Bearer {issued.token}"),)


def _revoke(auth: Auth, ranks: Ranks, user: str, caller: Metadata) -> Awaitable[tpb.RevokeApiKeyResponse]:
    request = tpb.RevokeApiKeyRequest(tenant_id=ranks.tenant, api_key_id=ranks.key_id(user))
    call: Awaitable[tpb.RevokeApiKeyResponse] = auth.admin.RevokeApiKey(request, metadata=caller)
    return call


async def _edit_policy(
    auth: Auth, tenant: str, caller: Metadata, edit: Edit
) -> tpb.UpdateTenantPolicyResponse:
    """The current policy changed by ``edit``, written as the next version by ``caller``."""
    current = (
        await auth.admin.GetTenantPolicy(tpb.GetTenantPolicyRequest(tenant_id=tenant), metadata=auth.operator)
    ).policy
    policy = tenant_policy_pb2.TenantPolicy()
    policy.CopyFrom(current)
    for name in ("version", "update_time", "update_subject"):
        policy.ClearField(name)
    edit(policy)
    response: tpb.UpdateTenantPolicyResponse = await auth.admin.UpdateTenantPolicy(
        tpb.UpdateTenantPolicyRequest(tenant_id=tenant, policy=policy, expected_version=current.version),
        metadata=caller,
    )
    return response


def _set_role(role: str, *permissions: perm.Permission.ValueType) -> Edit:
    def edit(policy: tenant_policy_pb2.TenantPolicy) -> None:
        definition = next(d for d in policy.roles if d.role == role)
        del definition.permissions[:]
        definition.permissions.extend(permissions)

    return edit


def _delete_role(role: str) -> Edit:
    def edit(policy: tenant_policy_pb2.TenantPolicy) -> None:
        kept = [d for d in policy.roles if d.role != role]
        del policy.roles[:]
        policy.roles.extend(kept)

    return edit


def _add_provider(tenant: str) -> Edit:
    """A provider whose key the editor holds: its tokens could claim any role, or be any user."""
    key = make_idp_key("EdDSA", "own-1")

    def edit(policy: tenant_policy_pb2.TenantPolicy) -> None:
        policy.identity_providers.append(
            tenant_policy_pb2.OidcProvider(
                issuer=f"https://own.{tenant}.example/",
                audiences=["parapet"],
                jwks_json=json.dumps({"keys": [key.jwk]}),
                roles_claim="roles",
            )
        )

    return edit


async def test_a_lesser_admin_can_neither_lock_out_nor_demote_one_who_holds_more(auth: Auth) -> None:
    ranks = await _ranks(auth)
    hd = await _as_key(auth, ranks.keys["hd"][1])
    version = (
        await auth.admin.GetTenantPolicy(tpb.GetTenantPolicyRequest(tenant_id=ranks.tenant), metadata=hd)
    ).policy.version

    # The account and its credentials: disabling and minting were refused already, revoking was not.
    disable = tpb.UpdateUserRequest(
        tenant_id=ranks.tenant,
        user=user_pb2.User(user_id="boss", state=user_pb2.USER_STATE_DISABLED),
        update_mask=field_mask_pb2.FieldMask(paths=["state"]),
    )
    mint = tpb.CreateApiKeyRequest(tenant_id=ranks.tenant, api_key=api_key_pb2.ApiKey(user_id="boss"))
    calls = {
        "disable boss": auth.admin.UpdateUser(disable, metadata=hd),
        "mint a key for boss": auth.admin.CreateApiKey(mint, metadata=hd),
        "revoke boss's key": _revoke(auth, ranks, "boss", hd),
        "revoke aud's key (audit.read, no admin)": _revoke(auth, ranks, "aud", hd),
    }
    refused = {name: (await refusal(call))[:2] for name, call in calls.items()}
    assert refused == dict.fromkeys(calls, ESCALATION)
    for user in ("boss", "aud"):
        issued = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=ranks.keys[user][1]))
        assert issued.principal.subject == user

    # The policy: every edit that takes from (or reshapes) a role hd does not fully hold, or that changes who
    # may assert roles.
    edits = {
        "cut admin down to chat": _set_role("admin", perm.PERMISSION_CHAT),
        "delete admin": _delete_role("admin"),
        "delete auditor": _delete_role("auditor"),
        "add chat to auditor": _set_role("auditor", perm.PERMISSION_AUDIT_READ, perm.PERMISSION_CHAT),
        "add an identity provider": _add_provider(ranks.tenant),
    }
    refused = {
        name: (await refusal(_edit_policy(auth, ranks.tenant, hd, edit)))[:2] for name, edit in edits.items()
    }
    assert refused == dict.fromkeys(edits, ESCALATION)
    after = await auth.admin.GetTenantPolicy(tpb.GetTenantPolicyRequest(tenant_id=ranks.tenant), metadata=hd)
    assert after.policy.version == version


async def test_an_admin_still_manages_what_it_holds_entirely(auth: Auth) -> None:
    ranks = await _ranks(auth)
    hd = await _as_key(auth, ranks.keys["hd"][1])
    boss = await _as_key(auth, ranks.keys["boss"][1])

    # hd holds everything member grants (chat): it may revoke mia's key and reshape or delete member.
    await _revoke(auth, ranks, "mia", hd)
    assert (await refusal(auth.auth.Authenticate(apb.AuthenticateRequest(api_key=ranks.keys["mia"][1]))))[
        :2
    ] == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")
    await _edit_policy(auth, ranks.tenant, hd, _set_role("member"))
    await _edit_policy(auth, ranks.tenant, hd, _delete_role("member"))

    # boss holds every tenant permission: it may act on anyone and edit anything, identity providers too.
    await _revoke(auth, ranks, "aud", boss)
    await _revoke(auth, ranks, "hd", boss)
    await _edit_policy(auth, ranks.tenant, boss, _set_role("auditor", perm.PERMISSION_CHAT))
    await _edit_policy(auth, ranks.tenant, boss, _delete_role("helpdesk"))
    stored = await _edit_policy(auth, ranks.tenant, boss, _add_provider(ranks.tenant))
    assert [r.role for r in stored.policy.roles] == ["admin", "auditor"]
    assert len(stored.policy.identity_providers) == 1

    # The platform operator is not bound by the tenant's ranks.
    await _revoke(auth, ranks, "boss", auth.operator)
