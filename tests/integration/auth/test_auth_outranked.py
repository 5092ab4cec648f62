"""A tenant admin may act only on those it holds everything of: no revoking a greater admin's keys, no cutting
down, deleting or redefining a role it does not fully hold, no changing the identity providers (which can
assert any role) unless it holds every role. An admin holding all of it, and the platform operator, still may.
An OIDC-only admin has no user row: what its provider asserted at sign-in is its rank."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
from google.protobuf import field_mask_pb2

from parapet.auth.v1 import api_key_pb2, tenant_policy_pb2, user_pb2
from parapet.auth.v1 import auth_service_pb2 as apb
from parapet.auth.v1 import permission_pb2 as perm
from parapet.auth.v1 import tenant_admin_service_pb2 as tpb
from parapet.kit.testing import refusal
from services.auth.invalidation import libpq_url
from tests.integration.auth.conftest import Auth, Idp, Metadata, make_idp_key

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


# An admin who is not a full one (admin and chat only), and a plain member: the two roles every test here uses.
HELPDESK = tenant_policy_pb2.RoleDefinition(
    role="helpdesk", permissions=[perm.PERMISSION_ADMIN, perm.PERMISSION_CHAT]
)
MEMBER = tenant_policy_pb2.RoleDefinition(role="member", permissions=[perm.PERMISSION_CHAT])


async def _ranks(auth: Auth) -> Ranks:
    tenant = await auth.new_tenant()
    await auth.set_policy(
        tenant,
        tenant_policy_pb2.TenantPolicy(
            roles=[
                HELPDESK,
                tenant_policy_pb2.RoleDefinition(role="auditor", permissions=[perm.PERMISSION_AUDIT_READ]),
                MEMBER,
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


# -- OIDC-only users: their rank comes from what their identity provider asserts, not from a user row ------


async def _staff(auth: Auth, tenant: str) -> dict[str, Metadata]:
    """In the ``idp`` tenant (role analyst = chat; its provider asserts roles): roles helpdesk (admin, chat)
    and member (chat), and two API-key admins, ``hd`` (helpdesk) and ``boss`` (admin), as call metadata."""
    await auth.set_policy(
        tenant,
        tenant_policy_pb2.TenantPolicy(
            roles=[
                HELPDESK,
                MEMBER,
            ]
        ),
    )
    staff = {}
    for user, role in (("hd", "helpdesk"), ("boss", "admin")):
        await auth.new_user(tenant, user, (role,))
        staff[user] = await _as_key(auth, (await auth.new_key(tenant, user))[1])
    return staff


async def _sign_in(auth: Auth, idp: Idp, subject: str, *roles: str) -> apb.AuthenticateResponse:
    """A real OIDC sign-in through the provider (a fresh token each time, so never a cached identity)."""
    response: apb.AuthenticateResponse = await auth.auth.Authenticate(
        apb.AuthenticateRequest(oidc_token=idp.token(sub=subject, roles=list(roles)))
    )
    return response


def _create(tenant: str, user_id: str, **fields: Any) -> tpb.CreateUserRequest:
    return tpb.CreateUserRequest(tenant_id=tenant, user=user_pb2.User(user_id=user_id, **fields))


async def test_a_lesser_admin_can_neither_lock_out_nor_impersonate_an_oidc_only_admin(
    auth: Auth, idp: Idp
) -> None:
    tenant = idp.tenant_id
    staff = await _staff(auth, tenant)
    hd = staff["hd"]
    grace = (await _sign_in(auth, idp, "grace", "admin")).principal  # OIDC only: no user row
    assert (grace.subject, list(grace.roles)) == ("grace", ["admin"])

    # Lockout (a disabled row for her subject) and impersonation (a row with a lesser role, then a key under
    # her subject): both went through before, as the holder rule saw no row.
    attempts = {
        "a disabled row for grace": _create(tenant, "grace", state=user_pb2.USER_STATE_DISABLED),
        "grace as a member": _create(tenant, "grace", roles=["member"]),
    }
    refused = {
        name: (await refusal(auth.admin.CreateUser(r, metadata=hd)))[:2] for name, r in attempts.items()
    }
    assert refused == dict.fromkeys(attempts, ESCALATION)
    assert (await _sign_in(auth, idp, "grace", "admin")).principal.roles == ["admin"]

    # A row made for her by an admin who holds everything (her groups, say) does not lower her rank to the
    # row's: hd can still neither mint a key under her subject, nor disable her, nor revoke her key.
    await auth.admin.CreateUser(_create(tenant, "grace", groups=["board"]), metadata=staff["boss"])
    key_id, _ = await auth.new_key(tenant, "grace")
    disable = tpb.UpdateUserRequest(
        tenant_id=tenant,
        user=user_pb2.User(user_id="grace", state=user_pb2.USER_STATE_DISABLED),
        update_mask=field_mask_pb2.FieldMask(paths=["state"]),
    )
    mint = tpb.CreateApiKeyRequest(tenant_id=tenant, api_key=api_key_pb2.ApiKey(user_id="grace"))
    revoke = tpb.RevokeApiKeyRequest(tenant_id=tenant, api_key_id=key_id)
    calls = {
        "mint a key for grace": auth.admin.CreateApiKey(mint, metadata=hd),
        "disable grace": auth.admin.UpdateUser(disable, metadata=hd),
        "revoke grace's key": auth.admin.RevokeApiKey(revoke, metadata=hd),
    }
    refused = {name: (await refusal(call))[:2] for name, call in calls.items()}
    assert refused == dict.fromkeys(calls, ESCALATION)
    again = (await _sign_in(auth, idp, "grace", "admin")).principal
    assert (list(again.roles), list(again.groups)) == (["admin"], ["board", "finance"])

    # boss holds every role: it may act on her; so may the platform operator.
    await auth.admin.UpdateUser(disable, metadata=staff["boss"])
    assert (await refusal(_sign_in(auth, idp, "grace", "admin")))[:2] == (
        grpc.StatusCode.UNAUTHENTICATED,
        "USER_DISABLED",
    )


async def test_a_subject_is_ranked_by_its_last_sign_in_and_an_unseen_one_could_be_anyone(
    auth: Auth, idp: Idp, database_url: str
) -> None:
    tenant = idp.tenant_id
    staff = await _staff(auth, tenant)
    hd = staff["hd"]

    # Nobody has signed in as "newcomer": the provider could make them admin at their first sign-in, so only an
    # admin holding every role may create the row (else a lesser admin could claim a future admin's subject).
    assert (await refusal(auth.admin.CreateUser(_create(tenant, "newcomer"), metadata=hd)))[:2] == ESCALATION
    await auth.admin.CreateUser(_create(tenant, "newcomer"), metadata=staff["boss"])

    # A subject signed in as analyst (chat, which hd holds): hd may create its row and mint its key.
    await _sign_in(auth, idp, "ann", "analyst")
    await auth.admin.CreateUser(_create(tenant, "ann", roles=["member"]), metadata=hd)
    await auth.admin.CreateApiKey(
        tpb.CreateApiKeyRequest(tenant_id=tenant, api_key=api_key_pb2.ApiKey(user_id="ann")), metadata=hd
    )

    # The rank is what the last sign-in asserted: promoted at the provider, gus is out of hd's reach; demoted,
    # within it again.
    await _sign_in(auth, idp, "gus", "analyst", "admin")
    assert (await refusal(auth.admin.CreateUser(_create(tenant, "gus"), metadata=hd)))[:2] == ESCALATION
    # A token issued before the promotion, still valid, does not bring the lesser rank back.
    older = idp.token(sub="gus", roles=["analyst"], iat=int(time.time()) - 60)
    await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=older))
    assert (await refusal(auth.admin.CreateUser(_create(tenant, "gus"), metadata=hd)))[:2] == ESCALATION
    await _sign_in(auth, idp, "gus", "analyst")
    await auth.admin.CreateUser(_create(tenant, "gus"), metadata=hd)

    # The record is written when a subject is first seen or its roles change, not on every sign-in.
    async def recorded(subject: str) -> tuple[Any, ...]:
        async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
            row = await (
                await conn.execute(
                    "SELECT xmin::text, roles, roles_time FROM auth.oidc_subjects"
                    " WHERE tenant_id = %s AND subject = %s AND issuer = %s",
                    (tenant, subject, idp.issuer),
                )
            ).fetchone()
            assert row is not None
            return tuple(row)

    before = await recorded("ann")
    assert before[1] == ["analyst"]
    for _ in range(3):
        await _sign_in(auth, idp, "ann", "analyst")
    assert await recorded("ann") == before
    await _sign_in(auth, idp, "ann", "analyst", "member")
    assert (await recorded("ann"))[1] == ["analyst", "member"]

    # A provider that asserts no roles gives its subjects only what their row grants: an unseen subject holds
    # nothing, and hd may create it.
    await _edit_policy(auth, tenant, auth.operator, _without_roles_claim)
    await auth.admin.CreateUser(_create(tenant, "nobody-yet"), metadata=hd)


def _without_roles_claim(policy: tenant_policy_pb2.TenantPolicy) -> None:
    for provider in policy.identity_providers:
        provider.roles_claim = ""


async def test_a_promotion_signed_in_while_a_lesser_admin_creates_the_row_is_not_missed(
    auth: Auth, idp: Idp, database_url: str
) -> None:
    """The holder rule reads the subject's recorded roles inside CreateUser's transaction: a sign-in that
    records a promotion before that transaction commits must either be seen or wait, never slip past."""
    tenant = idp.tenant_id
    hd = (await _staff(auth, tenant))["hd"]
    await _sign_in(auth, idp, "hal", "analyst")  # within hd's reach

    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as promoting:
        # The provider promotes hal; its sign-in has recorded that, and has not committed yet.
        await promoting.execute(
            "UPDATE auth.oidc_subjects SET roles = %s WHERE tenant_id = %s AND subject = %s AND issuer = %s",
            (["admin"], tenant, "hal", idp.issuer),
        )
        holder = (await (await promoting.execute("SELECT pg_backend_pid()")).fetchone() or (0,))[0]
        creating = asyncio.ensure_future(auth.admin.CreateUser(_create(tenant, "hal"), metadata=hd))
        async with await psycopg.AsyncConnection.connect(libpq_url(database_url), autocommit=True) as watch:
            while not creating.done():
                waiting = await (
                    await watch.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                        (holder,),
                    )
                ).fetchone()
                if waiting and waiting[0]:
                    break  # CreateUser waits for the promotion to commit or roll back
                await asyncio.sleep(0.02)
        await promoting.commit()
    assert (await refusal(creating))[:2] == ESCALATION
