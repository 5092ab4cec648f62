"""Every bad credential and every forbidden admin call of the issue, as a table: each gets UNAUTHENTICATED,
PERMISSION_DENIED (or ABORTED for a stale policy edit) with its ErrorInfo reason, is logged, and changes
nothing in the database."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import field_mask_pb2

from parapet.auth.v1 import api_key_pb2, tenant_pb2, tenant_policy_pb2, user_pb2
from parapet.auth.v1 import auth_service_pb2 as apb
from parapet.auth.v1 import permission_pb2 as perm
from parapet.auth.v1 import tenant_admin_service_pb2 as tpb
from parapet.kit.errors import error_details
from parapet.kit.identity import Principal, TokenSigner
from services.auth.invalidation import libpq_url
from tests.integration.auth.auth_support import logged
from tests.integration.auth.conftest import Auth, Idp, make_idp_key

U, P, A = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.ABORTED


@dataclass(frozen=True)
class Case:
    name: str
    call: Callable[[], Awaitable[Any]]
    code: grpc.StatusCode
    reason: str


async def _snapshot(database_url: str) -> list[Any]:
    """Everything an attack could change (the outbox excepted: refused attempts are recorded there)."""
    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
        rows: list[Any] = []
        for query in (
            "SELECT tenant_id, state, update_time FROM auth.tenants ORDER BY 1",
            "SELECT tenant_id, user_id, roles, groups, state, update_time FROM auth.users ORDER BY 1, 2",
            "SELECT tenant_id, api_key_id, revoke_time, scopes FROM auth.api_keys ORDER BY 1, 2",
            "SELECT tenant_id, version FROM auth.policies ORDER BY 1, 2",
            "SELECT * FROM auth.api_key_prefixes ORDER BY 1",
            "SELECT * FROM auth.oidc_issuers ORDER BY 1",
        ):
            rows.append(await (await conn.execute(query)).fetchall())
        return rows


def _editable(base: tenant_policy_pb2.TenantPolicy) -> tenant_policy_pb2.TenantPolicy:
    """A copy of ``base`` without what the server sets on a stored version."""
    policy = tenant_policy_pb2.TenantPolicy()
    policy.CopyFrom(base)
    for name in ("version", "update_time", "update_subject"):
        policy.ClearField(name)
    return policy


def _policy_with(
    base: tenant_policy_pb2.TenantPolicy, role: str, *permissions: perm.Permission.ValueType
) -> tenant_policy_pb2.TenantPolicy:
    policy = _editable(base)
    for definition in policy.roles:
        if definition.role == role:
            definition.permissions.extend(permissions)
            break
    else:
        policy.roles.append(tenant_policy_pb2.RoleDefinition(role=role, permissions=permissions))
    return policy


def _policy_without(base: tenant_policy_pb2.TenantPolicy, role: str) -> tenant_policy_pb2.TenantPolicy:
    policy = _editable(base)
    kept = [definition for definition in policy.roles if definition.role != role]
    del policy.roles[:]
    policy.roles.extend(kept)
    return policy


def _policy_trusting(base: tenant_policy_pb2.TenantPolicy, key: Any) -> tenant_policy_pb2.TenantPolicy:
    """``base`` plus an identity provider whose tokens ``key`` signs."""
    policy = _editable(base)
    policy.identity_providers.append(
        tenant_policy_pb2.OidcProvider(
            issuer="https://own.example/", audiences=["parapet"], jwks_json=json.dumps({"keys": [key.jwk]})
        )
    )
    return policy


async def test_every_bad_input_is_refused_with_its_reason_and_changes_nothing(
    auth: Auth, idp: Idp, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = idp.tenant_id
    other = await auth.new_tenant("other")
    disabled = await auth.new_tenant("off")
    # Roles: helpdesk administers users but holds no audit.read; auditor holds audit.read; editor is no admin.
    base = (
        await auth.admin.GetTenantPolicy(tpb.GetTenantPolicyRequest(tenant_id=tenant), metadata=auth.operator)
    ).policy
    policy = _policy_with(base, "helpdesk", perm.PERMISSION_ADMIN, perm.PERMISSION_CHAT)
    policy = _policy_with(policy, "auditor", perm.PERMISSION_AUDIT_READ)
    policy = _policy_with(policy, "editor", perm.PERMISSION_INGEST)
    updated = await auth.admin.UpdateTenantPolicy(
        tpb.UpdateTenantPolicyRequest(tenant_id=tenant, policy=policy, expected_version=base.version),
        metadata=auth.operator,
    )
    version = updated.policy.version
    users = (
        ("svc", ()),
        ("revoked", ()),
        ("expired", ()),
        ("gone", ()),
        ("eve", ("editor",)),
        ("aud", ("auditor",)),
    )
    for user, roles in users:
        await auth.new_user(tenant, user, roles=roles)
    aud_key_id, _ = await auth.new_key(tenant, "aud")
    _, good_key = await auth.new_key(tenant, "svc")
    revoked_id, revoked_key = await auth.new_key(tenant, "revoked")
    await auth.admin.RevokeApiKey(
        tpb.RevokeApiKeyRequest(tenant_id=tenant, api_key_id=revoked_id), metadata=auth.operator
    )
    expired_id, expired_key = await auth.new_key(tenant, "expired")
    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
        await conn.execute(
            "UPDATE auth.api_keys SET expire_time = now() - interval '1 minute' WHERE api_key_id = %s",
            (expired_id,),
        )
        await conn.commit()
    _, gone_key = await auth.new_key(tenant, "gone")
    await auth.admin.UpdateUser(
        tpb.UpdateUserRequest(
            tenant_id=tenant,
            user=user_pb2.User(user_id="gone", state=user_pb2.USER_STATE_DISABLED),
            update_mask=field_mask_pb2.FieldMask(paths=["state"]),
        ),
        metadata=auth.operator,
    )
    await auth.new_user(disabled, "svc")
    _, disabled_key = await auth.new_key(disabled, "svc")
    await auth.admin.DisableTenant(tpb.DisableTenantRequest(tenant_id=disabled), metadata=auth.operator)

    prefix = good_key.split("_")[1]
    rsa_public_pem = (
        idp.keys["RS256"]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    now = int(time.time())
    unsigned = jwt.encode(
        {"iss": idp.issuer, "aud": idp.audience, "sub": "alice", "exp": now + 60}, "", algorithm="none"
    )
    forger = make_idp_key("RS256", "rs256-1")  # the provider's kid, another key
    forged = jwt.encode(
        {"iss": idp.issuer, "aud": idp.audience, "sub": "alice", "exp": now + 60},
        forger.private,
        algorithm="RS256",
        headers={"kid": "rs256-1"},
    )
    hs_with_public_key = _hs256(
        rsa_public_pem, {"iss": idp.issuer, "aud": idp.audience, "sub": "alice", "exp": now + 60}
    )
    foreign_signer = TokenSigner(Ed25519PrivateKey.generate(), auth.signer.kid)

    def authn(**credential: str) -> Callable[[], Awaitable[Any]]:
        return lambda: auth.auth.Authenticate(apb.AuthenticateRequest(**credential))

    tenant_admin = auth.as_(tenant, "root", ("admin",))
    helpdesk = auth.as_(tenant, "hd", ("helpdesk",))
    eve = auth.as_(tenant, "eve", ("editor",))

    def update_user(metadata: Any, user_id: str, roles: tuple[str, ...]) -> Callable[[], Awaitable[Any]]:
        return lambda: auth.admin.UpdateUser(
            tpb.UpdateUserRequest(
                tenant_id=tenant,
                user=user_pb2.User(user_id=user_id, roles=roles),
                update_mask=field_mask_pb2.FieldMask(paths=["roles"]),
            ),
            metadata=metadata,
        )

    def update_policy(
        metadata: Any, new: tenant_policy_pb2.TenantPolicy, expected: int
    ) -> Callable[[], Awaitable[Any]]:
        return lambda: auth.admin.UpdateTenantPolicy(
            tpb.UpdateTenantPolicyRequest(tenant_id=tenant, policy=new, expected_version=expected),
            metadata=metadata,
        )

    cases = [
        Case("no credential", authn(), U, "CREDENTIAL_MISSING"),
        Case("malformed API key", authn(api_key="hello"), U, "API_KEY_INVALID"),
        Case("oversized API key", authn(api_key="pk_" + "a" * 300), U, "CREDENTIAL_TOO_LARGE"),
        Case("unknown API key", authn(api_key=f"pk_{'a' * 12}_{'B' * 43}"), U, "API_KEY_INVALID"),
        Case("forged API key secret", authn(api_key=f"pk_{prefix}_{'C' * 43}"), U, "API_KEY_INVALID"),
        Case("revoked API key", authn(api_key=revoked_key), U, "API_KEY_REVOKED"),
        Case("expired API key", authn(api_key=expired_key), U, "API_KEY_EXPIRED"),
        Case("disabled user", authn(api_key=gone_key), U, "USER_DISABLED"),
        Case("disabled tenant", authn(api_key=disabled_key), U, "TENANT_DISABLED"),
        Case("malformed OIDC token", authn(oidc_token="not.a.jwt"), U, "OIDC_TOKEN_INVALID"),
        Case("alg none", authn(oidc_token=unsigned), U, "OIDC_ALGORITHM_REJECTED"),
        Case(
            "HS256 keyed with the public key",
            authn(oidc_token=hs_with_public_key),
            U,
            "OIDC_ALGORITHM_REJECTED",
        ),
        Case("forged OIDC signature", authn(oidc_token=forged), U, "OIDC_SIGNATURE_INVALID"),
        Case("unknown kid", authn(oidc_token=idp.token(kid="nobody")), U, "OIDC_SIGNATURE_INVALID"),
        Case(
            "key type not fitting alg",
            authn(oidc_token=idp.token("ES256", kid="rs256-1")),
            U,
            "OIDC_SIGNATURE_INVALID",
        ),
        Case(
            "wrong issuer", authn(oidc_token=idp.token(iss="https://evil.example/")), U, "OIDC_ISSUER_UNKNOWN"
        ),
        Case("wrong audience", authn(oidc_token=idp.token(aud="someone-else")), U, "OIDC_AUDIENCE_MISMATCH"),
        Case("expired OIDC token", authn(oidc_token=idp.token(exp=now - 120)), U, "OIDC_TOKEN_EXPIRED"),
        Case(
            "OIDC token not yet valid",
            authn(oidc_token=idp.token(nbf=now + 120)),
            U,
            "OIDC_TOKEN_NOT_YET_VALID",
        ),
        Case("OIDC token without subject", authn(oidc_token=idp.token(sub=None)), U, "OIDC_TOKEN_INVALID"),
        Case(
            "oversized OIDC token", authn(oidc_token=idp.token(pad="x" * 20_000)), U, "CREDENTIAL_TOO_LARGE"
        ),
        Case(
            "admin RPC without a token",
            lambda: auth.admin.ListUsers(tpb.ListUsersRequest(tenant_id=tenant)),
            U,
            "TOKEN_MISSING",
        ),
        Case(
            "admin RPC with a forged internal token",
            lambda: auth.admin.ListUsers(
                tpb.ListUsersRequest(tenant_id=tenant),
                metadata=(
                    ("authorization", "Bearer " + foreign_signer.sign(Principal(tenant, "root", ("admin",)))),
                ),
            ),
            U,
            "TOKEN_INVALID",
        ),
        Case(
            "admin RPC with a malformed internal token",
            lambda: auth.admin.ListUsers(
                tpb.ListUsersRequest(tenant_id=tenant), metadata=(("authorization", "Bearer not-a-token"),)
            ),
            U,
            "TOKEN_INVALID",
        ),
        Case(
            "admin RPC with an oversized internal token",
            lambda: auth.admin.ListUsers(
                tpb.ListUsersRequest(tenant_id=tenant),
                metadata=(
                    ("authorization", "Bearer " + auth.signer.sign(Principal(tenant, "root", ("x" * 9000,)))),
                ),
            ),
            U,
            "TOKEN_TOO_LARGE",
        ),
        Case(
            "another tenant's admin creates a key",
            lambda: auth.admin.CreateApiKey(
                tpb.CreateApiKeyRequest(tenant_id=other, api_key=api_key_pb2.ApiKey(user_id="svc")),
                metadata=tenant_admin,
            ),
            P,
            "TENANT_MISMATCH",
        ),
        Case(
            "another tenant's admin revokes a key",
            lambda: auth.admin.RevokeApiKey(
                tpb.RevokeApiKeyRequest(tenant_id=other, api_key_id=str(uuid.uuid4())), metadata=tenant_admin
            ),
            P,
            "TENANT_MISMATCH",
        ),
        Case(
            "a role grants itself admin",
            update_user(eve, "eve", ("editor", "admin")),
            P,
            "PERMISSION_MISSING",
        ),
        Case(
            "a role edits the policy to grant itself admin",
            update_policy(eve, _policy_with(updated.policy, "editor", perm.PERMISSION_ADMIN), version),
            P,
            "PERMISSION_MISSING",
        ),
        Case(
            "admin grants a role above its own",
            update_user(helpdesk, "svc", ("auditor",)),
            P,
            "PRIVILEGE_ESCALATION",
        ),
        Case(
            "admin disables a more privileged user",
            lambda: auth.admin.UpdateUser(
                tpb.UpdateUserRequest(
                    tenant_id=tenant,
                    user=user_pb2.User(user_id="aud", state=user_pb2.USER_STATE_DISABLED),
                    update_mask=field_mask_pb2.FieldMask(paths=["state"]),
                ),
                metadata=helpdesk,
            ),
            P,
            "PRIVILEGE_ESCALATION",
        ),
        Case(
            "admin mints a key for a more privileged user",
            lambda: auth.admin.CreateApiKey(
                tpb.CreateApiKeyRequest(tenant_id=tenant, api_key=api_key_pb2.ApiKey(user_id="aud")),
                metadata=helpdesk,
            ),
            P,
            "PRIVILEGE_ESCALATION",
        ),
        Case(
            "admin revokes a more privileged user's key",
            lambda: auth.admin.RevokeApiKey(
                tpb.RevokeApiKeyRequest(tenant_id=tenant, api_key_id=aud_key_id), metadata=helpdesk
            ),
            P,
            "PRIVILEGE_ESCALATION",
        ),
        Case(
            "admin deletes a role it does not fully hold",
            update_policy(helpdesk, _policy_without(updated.policy, "admin"), version),
            P,
            "PRIVILEGE_ESCALATION",
        ),
        Case(
            "admin adds an identity provider (it could claim any role)",
            update_policy(helpdesk, _policy_trusting(updated.policy, make_idp_key("EdDSA", "own")), version),
            P,
            "PRIVILEGE_ESCALATION",
        ),
        Case(
            "admin widens its own role",
            update_policy(
                helpdesk, _policy_with(updated.policy, "helpdesk", perm.PERMISSION_AUDIT_READ), version
            ),
            P,
            "PRIVILEGE_ESCALATION",
        ),
        Case(
            "tenant admin grants platform administration",
            update_policy(
                tenant_admin, _policy_with(updated.policy, "admin", perm.PERMISSION_PLATFORM_ADMIN), version
            ),
            P,
            "PRIVILEGE_ESCALATION",
        ),
        Case(
            "tenant admin creates a tenant",
            lambda: auth.admin.CreateTenant(
                tpb.CreateTenantRequest(tenant=tenant_pb2.Tenant(tenant_id="sneaky", display_name="x")),
                metadata=tenant_admin,
            ),
            P,
            "PERMISSION_MISSING",
        ),
        Case(
            "stale policy version",
            update_policy(
                tenant_admin, _policy_with(updated.policy, "editor", perm.PERMISSION_CHAT), version - 1
            ),
            A,
            "POLICY_VERSION_MISMATCH",
        ),
    ]

    caplog.set_level(logging.INFO)
    before = await _snapshot(database_url)
    mismatches: list[tuple[str, object]] = []
    for case in cases:
        caplog.clear()
        try:
            await case.call()
        except grpc.aio.AioRpcError as error:
            details = error_details(error)
            got = (error.code(), details.reason, details.error_info.domain if details.error_info else None)
            if got != (case.code, case.reason, "parapet.dev"):
                mismatches.append((case.name, got))
            elif not await logged(caplog, case.reason):
                mismatches.append((case.name, "not logged"))
        else:
            mismatches.append((case.name, "accepted"))
    assert mismatches == [], mismatches
    assert await _snapshot(database_url) == before


def _hs256(secret: bytes, claims: dict[str, Any]) -> str:
    """An HS256 token keyed with ``secret`` (PyJWT refuses PEM keys as HMAC secrets, so sign by hand)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = (
        b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rs256-1"}).encode())
        + "."
        + b64(json.dumps(claims).encode())
    )
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)
