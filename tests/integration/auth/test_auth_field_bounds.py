"""Every free-form field of the admin RPCs is bounded, so that no tenant admin can stall every tenant's audit
trail or store what no token can carry.

An admin change's audit record carries the user's groups and roles and the key's scopes; the outbox relay
publishes records in order, and one over NATS's message limit (1 MiB) failed on every round, holding up every
later record of every tenant for good. Until 2026-12-06 one CreateUser with a megabyte of groups (or a
CreateApiKey with the scope `chat` repeated 300,000 times) did that
(`test_a_user_too_large_for_one_audit_record_is_refused_and_the_trail_flows_on`: "0 of 1 records").
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from parapet.auth.v1 import api_key_pb2, permission_pb2, tenant_pb2, tenant_policy_pb2, user_pb2
from parapet.auth.v1 import auth_service_pb2 as apb
from parapet.auth.v1 import tenant_admin_service_pb2 as tpb
from parapet.kit.testing import refusal
from services.auth.bounds import (
    MAX_GROUP_LENGTH,
    MAX_GROUPS,
    MAX_ROLES,
    MAX_TEXT_LENGTH,
    MAX_TOKEN_IDENTITY_BYTES,
    escaped,
)
from tests.integration.auth.auth_support import audit_records, groups_taking
from tests.integration.auth.conftest import PLATFORM, Auth

HUGE_GROUPS = [f"g{i}-" + "x" * 1000 for i in range(1100)]  # about 1.1 MB


async def _outcome(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str | None, list[str]] | None:
    """How the call failed, or None when it succeeded."""
    try:
        return await refusal(call)
    except AssertionError:
        return None


async def test_a_user_too_large_for_one_audit_record_is_refused_and_the_trail_flows_on(
    auth: Auth, nats_url: str
) -> None:
    tenant = await auth.new_tenant()
    created = await _outcome(
        auth.admin.CreateUser(
            tpb.CreateUserRequest(
                tenant_id=tenant, user=user_pb2.User(user_id="hoarder", groups=HUGE_GROUPS)
            ),
            metadata=auth.operator,
        )
    )
    # Every tenant's later changes still reach the trail.
    later = await auth.new_tenant()
    assert len(await audit_records(nats_url, later, 1)) == 1
    assert created is not None and (created[0], created[2]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["user.groups"],
    )


async def test_repeated_scopes_are_one_scope(auth: Auth, nats_url: str) -> None:
    tenant = await auth.new_tenant()
    await auth.new_user(tenant, "svc")
    created = await auth.admin.CreateApiKey(
        tpb.CreateApiKeyRequest(
            tenant_id=tenant,
            api_key=api_key_pb2.ApiKey(user_id="svc", scopes=["chat"] * 300_000 + ["ingest"]),
        ),
        metadata=auth.operator,
    )
    assert list(created.api_key.scopes) == ["chat", "ingest"]
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=created.secret))
    assert list(issued.principal.scopes) == ["chat", "ingest"]
    record = (await audit_records(nats_url, tenant, 3))[2][0]  # CreateTenant, CreateUser, CreateApiKey
    assert record.admin_action.attributes["scopes"] == "chat,ingest"


def _user(**fields: Any) -> user_pb2.User:
    return user_pb2.User(**({"user_id": "someone"} | fields))


LONG = "x" * (MAX_TEXT_LENGTH + 1)
BAD_USERS = [
    ("a display name too long", _user(display_name=LONG), "user.display_name"),
    ("an email too long", _user(email=LONG), "user.email"),
    ("too many groups", _user(groups=[f"g{i}" for i in range(MAX_GROUPS + 1)]), "user.groups"),
    ("an empty group", _user(groups=["finance", ""]), "user.groups[1]"),
    ("a group too long", _user(groups=["g" * (MAX_GROUP_LENGTH + 1)]), "user.groups[0]"),
    ("too many roles", _user(roles=[f"r{i}" for i in range(MAX_ROLES + 1)]), "user.roles"),
]


@pytest.mark.parametrize(("case", "user", "field"), BAD_USERS, ids=[case for case, _, _ in BAD_USERS])
async def test_a_user_out_of_bounds_is_invalid_argument_on_its_field(
    auth: Auth, case: str, user: user_pb2.User, field: str
) -> None:
    tenant = await auth.new_tenant()
    code, _, fields = await refusal(
        auth.admin.CreateUser(tpb.CreateUserRequest(tenant_id=tenant, user=user), metadata=auth.operator)
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field]), case


async def test_an_update_out_of_bounds_is_invalid_argument_on_its_field(auth: Auth, nats_url: str) -> None:
    tenant = await auth.new_tenant()
    await auth.new_user(tenant, "someone")
    for user, path, field in (
        (_user(groups=HUGE_GROUPS), "groups", "user.groups"),
        (_user(display_name=LONG), "display_name", "user.display_name"),
        (_user(email=LONG), "email", "user.email"),
    ):
        code, _, fields = await refusal(
            auth.admin.UpdateUser(
                tpb.UpdateUserRequest(
                    tenant_id=tenant, user=user, update_mask=field_mask_pb2.FieldMask(paths=[path])
                ),
                metadata=auth.operator,
            )
        )
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])
    # A field out of bounds that the mask leaves out is not the update's business.
    await auth.admin.UpdateUser(
        tpb.UpdateUserRequest(
            tenant_id=tenant,
            user=_user(display_name="Someone", groups=HUGE_GROUPS),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=auth.operator,
    )
    later = await auth.new_tenant()
    assert len(await audit_records(nats_url, later, 1)) == 1


async def test_a_user_at_the_bounds_signs_in_and_its_token_is_accepted(auth: Auth) -> None:
    # The most roles and groups a user may hold, of the longest names, still make a token the kit accepts.
    tenant = await auth.new_tenant()
    roles = tuple(f"r{i:02d}" + "r" * 60 for i in range(MAX_ROLES - 1))  # 63 characters, the most
    await auth.set_policy(
        tenant,
        tenant_policy_pb2.TenantPolicy(
            roles=[
                tenant_policy_pb2.RoleDefinition(role=role, permissions=[permission_pb2.PERMISSION_CHAT])
                for role in roles
            ]
        ),
    )
    groups = tuple(f"{i:03d}" + "g" * (MAX_GROUP_LENGTH - 3) for i in range(MAX_GROUPS))
    await auth.new_user(tenant, "u" * 255, roles=("admin", *roles), groups=groups)
    _, key = await auth.new_key(tenant, "u" * 255)
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key))
    assert list(issued.principal.groups) == sorted(groups)
    listed = await auth.admin.ListUsers(
        tpb.ListUsersRequest(tenant_id=tenant), metadata=(("authorization", f"Bearer {issued.token}"),)
    )
    assert [u.user_id for u in listed.users] == ["u" * 255]


async def test_display_names_of_keys_and_tenants_are_bounded(auth: Auth) -> None:
    tenant = await auth.new_tenant()
    await auth.new_user(tenant, "svc")
    code, _, fields = await refusal(
        auth.admin.CreateApiKey(
            tpb.CreateApiKeyRequest(
                tenant_id=tenant, api_key=api_key_pb2.ApiKey(user_id="svc", display_name=LONG)
            ),
            metadata=auth.operator,
        )
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["api_key.display_name"])
    code, _, fields = await refusal(
        auth.admin.CreateTenant(
            tpb.CreateTenantRequest(tenant=tenant_pb2.Tenant(tenant_id="bounded-t", display_name=LONG)),
            metadata=auth.operator,
        )
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["tenant.display_name"])


async def test_a_user_at_the_token_byte_bound_gets_a_usable_token_and_one_byte_more_is_refused(
    auth: Auth,
) -> None:
    """The bounds in characters let a user's groups take 28 KB in a token (a CJK character is 6 bytes escaped,
    an emoji 12, a quote 2), and the kit refused its every call (8 KiB; ListUsers with it: RESOURCE_EXHAUSTED).
    Before the fix a byte past the bound was stored too ("the call succeeded"). What a token carries of the user is bounded in escaped bytes: a user exactly at that bound
    gets a token the kit accepts, also a delegated one; a byte more is INVALID_ARGUMENT on `user.groups`."""
    tenant = await auth.new_tenant()
    user_id, roles = "u1", ("admin",)
    groups = groups_taking(MAX_TOKEN_IDENTITY_BYTES - escaped(user_id) - escaped(list(roles)))
    await auth.new_user(tenant, user_id, roles=roles, groups=tuple(groups))
    key_id, key = await auth.new_key(tenant, user_id)
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key))
    assert sorted(issued.principal.groups) == sorted(groups)
    listed = await auth.admin.ListUsers(
        tpb.ListUsersRequest(tenant_id=tenant), metadata=(("authorization", f"Bearer {issued.token}"),)
    )
    assert [u.user_id for u in listed.users] == [user_id]
    # A delegated token carries more (the delegator in `act`): the kit accepts it too.
    delegator = f"jobs-{uuid.uuid4().hex[:6]}"
    await auth.new_user(PLATFORM, delegator, roles=("token-delegator",))
    _, delegator_key = await auth.new_key(PLATFORM, delegator)
    own = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=delegator_key))
    delegated = await auth.auth.IssueDelegatedToken(
        apb.IssueDelegatedTokenRequest(tenant_id=tenant, subject=user_id, api_key_id=key_id),
        metadata=(("authorization", f"Bearer {own.token}"),),
    )
    decision = await auth.auth.Authorize(
        apb.AuthorizeRequest(permission=permission_pb2.PERMISSION_CHAT),
        metadata=(("authorization", f"Bearer {delegated.token}"),),
    )
    assert decision.allowed

    one_more = [*groups[:-1], groups[-1] + "x"]  # one character, one byte
    code, _, fields = await refusal(
        auth.admin.CreateUser(
            tpb.CreateUserRequest(
                tenant_id=tenant, user=user_pb2.User(user_id="u2", roles=roles, groups=one_more)
            ),
            metadata=auth.operator,
        )
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["user.groups"])
    quoted = [*groups[:-1], groups[-1][:-1] + '"']  # as many characters, a quote for a letter: a byte more
    code, _, fields = await refusal(
        auth.admin.CreateUser(
            tpb.CreateUserRequest(
                tenant_id=tenant, user=user_pb2.User(user_id="u3", roles=roles, groups=quoted)
            ),
            metadata=auth.operator,
        )
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["user.groups"])
    # Growing the user's groups past it is refused too; nothing is stored.
    code, _, fields = await refusal(
        auth.admin.UpdateUser(
            tpb.UpdateUserRequest(
                tenant_id=tenant,
                user=user_pb2.User(user_id=user_id, groups=one_more),
                update_mask=field_mask_pb2.FieldMask(paths=["groups"]),
            ),
            metadata=auth.operator,
        )
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["user.groups"])
    again = await auth.auth.Authenticate(apb.AuthenticateRequest(api_key=key))
    assert sorted(again.principal.groups) == sorted(groups)
