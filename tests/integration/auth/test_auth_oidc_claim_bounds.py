"""An OIDC sign-in whose provider asserts more roles or groups than an internal token can carry.

The kit refuses an internal token over 8 KiB (TOKEN_TOO_LARGE on every call), and a user's groups are what
retrieval grants documents by, so auth may neither hand out such a token nor quietly drop groups. Until
2026-12-08 an Entra ID user in 300 groups, or one in 32 groups of CJK names, signed in and got a token every
service refused; a user whose provider left its groups out of the token (Entra's "overage") signed in with
no groups at all. Now asserted roles travel only as far as the tenant's policy defines them (any other grants
nothing), and a sign-in whose token would be over the kit's limit, or whose groups the provider withheld, is
refused FAILED_PRECONDITION ``OIDC_CLAIMS_TOO_LARGE`` naming the size and the limit, logged, and recorded
once in the tenant's trail.
"""

from __future__ import annotations

import base64
import logging
import uuid

import grpc
import grpc.aio
import pytest

from parapet.auth.v1 import auth_service_pb2 as apb
from parapet.auth.v1 import permission_pb2
from parapet.auth.v1 import tenant_admin_service_pb2 as tpb
from parapet.kit.errors import ErrorDetails
from parapet.kit.identity import MAX_TOKEN_BYTES
from parapet.kit.testing import refusal_details
from services.auth.authenticator import AUTHENTICATE_METHOD
from services.auth.bounds import escaped
from tests.integration.auth.auth_support import audit_records, groups_taking, logged
from tests.integration.auth.conftest import Auth, Idp

ENTRA_GROUPS = [str(uuid.UUID(int=i + 1)) for i in range(300)]  # Entra ID names groups by object id
CJK_GROUPS = [f"{i:02d}" + "財務部門" * 24 + "部門" for i in range(32)]  # the admin API's bounds: 32 x 100


def _claims_bytes(token: str) -> int:
    """Bytes of an internal token's claims (its payload, before base64)."""
    payload = token.split(".")[1]
    return len(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


async def _refused(auth: Auth, token: str) -> ErrorDetails:
    return await refusal_details(auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=token)))


def _too_large(details: ErrorDetails) -> dict[str, str]:
    """The refusal's metadata, once it is the one for claims too large for a token."""
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "OIDC_CLAIMS_TOO_LARGE")
    assert details.error_info is not None
    metadata = dict(details.error_info.metadata)
    assert metadata["max_bytes"] == str(MAX_TOKEN_BYTES) and int(metadata["bytes"]) > MAX_TOKEN_BYTES
    assert f"takes {metadata['bytes']} bytes" in details.message
    assert f"at most {MAX_TOKEN_BYTES}" in details.message
    return metadata


async def _chats(auth: Auth, token: str) -> bool:
    """Whether a service takes the internal token (the kit verifies it, 8 KiB at most) and allows chat."""
    decision: apb.AuthorizeResponse = await auth.auth.Authorize(
        apb.AuthorizeRequest(permission=permission_pb2.PERMISSION_CHAT),
        metadata=(("authorization", f"Bearer {token}"),),
    )
    return decision.allowed


async def test_a_user_in_hundreds_of_groups_is_refused_naming_the_size_and_the_limit(
    auth: Auth, idp: Idp, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    token = idp.token(groups=ENTRA_GROUPS)
    for _ in range(3):  # a client retrying: each refused alike
        details = await _refused(auth, token)
        metadata = _too_large(details)
        assert metadata["claim"] == "groups"
        assert f"its 300 groups take {escaped(sorted(ENTRA_GROUPS))} bytes" in details.message
    assert await logged(caplog, "OIDC_CLAIMS_TOO_LARGE")

    # One record in the tenant's trail for the three (CreateTenant and the provider's policy came first),
    # naming the user, not its groups; the tenant's next change is the next record.
    record = (await audit_records(nats_url, idp.tenant_id, 3))[2][0]
    action = record.admin_action
    assert (action.method, action.target) == (AUTHENTICATE_METHOD, "alice")
    assert (action.status_code, action.error_reason) == (
        grpc.StatusCode.FAILED_PRECONDITION.value[0],
        "OIDC_CLAIMS_TOO_LARGE",
    )
    assert (action.actor.tenant_id, action.actor.subject, action.actor.issuer) == (
        idp.tenant_id,
        "alice",
        idp.issuer,
    )
    assert list(action.actor.groups) == []
    assert dict(action.attributes) == {"issuer": idp.issuer, **metadata, "roles": "1", "groups": "300"}
    await auth.new_user(idp.tenant_id, "svc")
    following = (await audit_records(nats_url, idp.tenant_id, 4))[3][0]
    assert following.admin_action.method.endswith("/CreateUser")


async def test_cjk_group_names_count_in_the_bytes_a_token_takes(auth: Auth, idp: Idp) -> None:
    # Within the admin API's bounds in characters (32 groups of 100): 19 KB as a token escapes them, while
    # the provider's own token writes them in UTF-8 (3 bytes each) and stays under its 16 KiB.
    token = idp.token(groups=CJK_GROUPS, utf8=True)
    assert len(token) < 16 * 1024
    details = await _refused(auth, token)
    _too_large(details)
    assert f"its 32 groups take {escaped(sorted(CJK_GROUPS))} bytes" in details.message


async def test_a_token_exactly_at_the_kit_s_limit_is_issued_and_a_byte_more_is_refused(
    auth: Auth, idp: Idp
) -> None:
    # Groups of CJK text, quotes, backslashes and emoji; then the last one grown, an ASCII letter a byte of
    # claims, until the token is exactly the kit's limit: header and signature are of fixed length, and
    # base64 turns each 3 bytes of claims into 4 characters.
    groups = groups_taking(4000)
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token(groups=groups)))
    room = MAX_TOKEN_BYTES - (len(issued.token) - len(issued.token.split(".")[1]))
    grow = room * 3 // 4 - _claims_bytes(issued.token)
    at_limit = [*groups[:-1], groups[-1] + "x" * grow]
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token(groups=at_limit)))
    assert len(issued.token) == MAX_TOKEN_BYTES
    assert list(issued.principal.groups) == sorted(at_limit)
    assert await _chats(auth, issued.token)

    one_more = [*groups[:-1], groups[-1] + "x" * (grow + 1)]
    _too_large(await _refused(auth, idp.token(groups=one_more)))


async def test_the_groups_of_the_user_row_count_with_the_asserted_ones(auth: Auth, idp: Idp) -> None:
    # The row's groups merge into the sign-in's: each set alone fits a token, both together do not.
    row = [f"r{i:02d}" + "財" * 90 for i in range(6)]
    asserted = [f"x{i:02d}" + "財" * 90 for i in range(6)]
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token(groups=asserted)))
    assert await _chats(auth, issued.token)
    await auth.new_user(idp.tenant_id, "alice", groups=tuple(row))
    details = await _refused(auth, idp.token(groups=asserted))
    _too_large(details)
    assert f"its 12 groups take {escaped(sorted(row + asserted))} bytes" in details.message


async def test_asserted_roles_the_policy_does_not_define_are_left_out_of_the_token(
    auth: Auth, idp: Idp
) -> None:
    # A provider asserting every app role of its directory (or mapping its groups to roles): only the roles
    # of the tenant's policy grant anything, and only they travel in the token.
    roles = ["analyst", *(f"app-role-{i:03d}" for i in range(400))]
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token(roles=roles)))
    assert list(issued.principal.roles) == ["analyst"]
    assert list(issued.principal.groups) == ["finance"]
    assert await _chats(auth, issued.token)


async def test_groups_the_provider_left_out_of_the_token_refuse_the_sign_in(auth: Auth, idp: Idp) -> None:
    # Entra ID names no groups past 200 (150 in SAML): it points to Graph instead (OIDC Core 5.6.2
    # distributed claims), or says only "hasgroups" in an implicit-flow token. Signing such a user in with
    # no groups would change what they may read without a word; auth cannot read Graph.
    overage = idp.token(
        groups=None,
        _claim_names={"groups": "src1"},
        _claim_sources={"src1": {"endpoint": "https://graph.microsoft.com/v1.0/users/1/getMemberObjects"}},
    )
    implicit = idp.token(groups=None, hasgroups=True)
    for token in (overage, implicit):
        details = await _refused(auth, token)
        assert (details.code, details.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "OIDC_CLAIMS_TOO_LARGE",
        )
        assert "'groups'" in details.message
        assert details.error_info is not None and details.error_info.metadata["claim"] == "groups"
    # A claim the provider points elsewhere that the tenant does not map is none of ours.
    other = idp.token(_claim_names={"photos": "src1"}, _claim_sources={"src1": {"endpoint": "https://x/"}})
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=other))
    assert list(issued.principal.groups) == ["finance"]


async def test_a_sign_in_refused_for_its_claims_leaves_the_recorded_roles_as_they_were(
    auth: Auth, idp: Idp
) -> None:
    # The roles a subject's provider asserted at its recorded sign-in are part of what its tokens act with
    # (``Access.current``). Until the fix a sign-in whose roles the provider withheld recorded them as none
    # before it was refused: the same user's still-valid admin token lost its admin rank at once (and the admin
    # checks ranked the subject as holding nothing). A sign-in refused for its size recorded its roles too.
    issued = await auth.auth.Authenticate(
        apb.AuthenticateRequest(oidc_token=idp.token(sub="zed", roles=["admin"]))
    )
    token = (("authorization", f"Bearer {issued.token}"),)
    await auth.admin.ListUsers(tpb.ListUsersRequest(tenant_id=idp.tenant_id), metadata=token)
    withheld = idp.token(
        sub="zed",
        roles=None,
        _claim_names={"roles": "src1"},
        _claim_sources={"src1": {"endpoint": "https://x/"}},
    )
    oversized = idp.token(sub="zed", roles=["analyst"], groups=ENTRA_GROUPS)
    for refused in (withheld, oversized):
        details = await _refused(auth, refused)
        assert (details.code, details.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "OIDC_CLAIMS_TOO_LARGE",
        )
        # The token still administers: nothing but the refusal's audit record was written.
        await auth.admin.ListUsers(tpb.ListUsersRequest(tenant_id=idp.tenant_id), metadata=token)
