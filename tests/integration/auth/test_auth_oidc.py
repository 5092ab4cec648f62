"""OIDC tokens of a tenant's identity provider: RS256, ES256 and EdDSA, claim mapping, key rotation by kid."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import grpc
import grpc.aio
import jwt
import pytest

from parapet.auth.v1 import auth_service_pb2 as apb
from parapet.auth.v1 import permission_pb2 as perm
from parapet.auth.v1 import tenant_admin_service_pb2 as tpb
from parapet.auth.v1 import tenant_policy_pb2
from parapet.identity.v1 import principal_pb2
from parapet.kit.errors import error_details
from parapet.kit.testing import refusal
from tests.integration.auth.conftest import Auth, Idp, make_idp_key


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_each_allowed_algorithm_authenticates_with_mapped_claims(
    auth: Auth, idp: Idp, alg: str
) -> None:
    token = idp.token(alg, jti="external-1")
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=token))
    principal = issued.principal
    assert (principal.tenant_id, principal.subject) == (idp.tenant_id, "alice")
    assert list(principal.roles) == ["analyst"] and list(principal.groups) == ["finance"]
    assert principal.credential_type == principal_pb2.CREDENTIAL_TYPE_OIDC_TOKEN
    assert principal.issuer == idp.issuer and principal.external_token_id == "external-1"
    assert issued.policy_version == 2

    metadata = (("authorization", f"Bearer {issued.token}"),)
    chat = await auth.auth.Authorize(apb.AuthorizeRequest(permission=perm.PERMISSION_CHAT), metadata=metadata)
    assert chat.allowed
    ingest = await auth.auth.Authorize(
        apb.AuthorizeRequest(permission=perm.PERMISSION_INGEST), metadata=metadata
    )
    assert (ingest.allowed, ingest.reason) == (False, "PERMISSION_MISSING")


async def test_a_rotated_key_is_fetched_on_its_unknown_kid(auth: Auth, idp: Idp) -> None:
    await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token("RS256")))
    fetched = idp.server.fetches
    rotated = make_idp_key("RS256", "rs256-2")
    idp.server.document = {"keys": [rotated.jwk]}
    idp.keys["RS256"] = rotated
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token("RS256")))
    assert issued.principal.subject == "alice"
    assert idp.server.fetches == fetched + 1
    # A known kid is served from the cache: no fetch per token.
    await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token("RS256", sub="bob")))
    assert idp.server.fetches == fetched + 1


async def test_an_inline_jwks_and_a_custom_subject_claim(auth: Auth, idp: Idp) -> None:
    key = make_idp_key("EdDSA", "inline-1")
    current = await auth.admin.GetTenantPolicy(
        tpb.GetTenantPolicyRequest(tenant_id=idp.tenant_id), metadata=auth.operator
    )
    policy = tenant_policy_pb2.TenantPolicy()
    policy.CopyFrom(current.policy)
    issuer = f"https://corp.{idp.tenant_id}.example/"
    policy.identity_providers.append(
        tenant_policy_pb2.OidcProvider(
            issuer=issuer,
            audiences=["parapet-corp"],
            jwks_json=json.dumps({"keys": [key.jwk]}),
            allowed_algorithms=["EdDSA"],
            subject_claim="email",
        )
    )
    await auth.admin.UpdateTenantPolicy(
        tpb.UpdateTenantPolicyRequest(
            tenant_id=idp.tenant_id, policy=policy, expected_version=current.policy.version
        ),
        metadata=auth.operator,
    )
    now = int(time.time())
    token = jwt.encode(
        {"iss": issuer, "aud": "parapet-corp", "sub": "0042", "email": "dana@corp.example", "exp": now + 60},
        key.private,
        algorithm="EdDSA",
        headers={"kid": "inline-1"},
    )
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=token))
    assert (issued.principal.tenant_id, issued.principal.subject) == (idp.tenant_id, "dana@corp.example")
    assert issued.principal.issuer == issuer and list(issued.principal.roles) == []


async def test_an_unreachable_jwks_url_is_unavailable_not_a_verdict(auth: Auth, idp: Idp) -> None:
    url = idp.server.url
    idp.server.close()  # nothing listens there any more, and nothing was fetched yet
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token("RS256")))
    details = error_details(raised.value)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE and details.reason == "DEPENDENCY_UNAVAILABLE"
    assert details.retry_after is not None and url.startswith("http://127.0.0.1")


async def test_a_jwks_url_serving_no_jwks_document_is_unavailable_not_internal(auth: Auth, idp: Idp) -> None:
    good = idp.server.document
    # Valid JSON, but not an object with a list under "keys": a failed fetch, like no answer. (Entries of the
    # list that are no usable key are skipped, not a failed fetch: see the next tests.)
    for document in ([1, 2], {"issuer": idp.issuer}, {"keys": {"kid": "rs256-1"}}, {"keys": None}):
        idp.server.document = document
        code, reason, _ = await refusal(
            auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token()))
        )
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE"), document
    idp.server.document = good  # nothing bad was cached: the provider's keys work as soon as it serves them
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token()))
    assert issued.principal.subject == "alice"


# Entries a JWKS may hold that we cannot use (RFC 7517 section 5: ignore JWKs one does not understand).
ODD_ENTRIES: list[Any] = [
    1,
    "rs256-1",
    None,
    ["kty", "RSA"],
    {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},  # a symmetric key: never ours to verify with
    {"kty": "RSA", "kid": "broken", "n": 5, "e": "AQAB"},  # members that make no key
    {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},  # a curve no allowed algorithm takes
    {"kty": "future-kind", "kid": "future"},
]


async def test_a_fetched_jwks_skips_the_entries_it_cannot_use(
    auth: Auth, idp: Idp, caplog: pytest.LogCaptureFixture
) -> None:
    good = idp.server.document["keys"]
    encrypting = dict(good[0], use="enc")  # the RS256 key again, marked for encryption: not for signatures
    idp.server.document = {"keys": [*ODD_ENTRIES, encrypting, *good]}
    with caplog.at_level(logging.WARNING, logger="services.auth.oidc"):
        for alg in ("RS256", "ES256", "EdDSA"):
            issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token(alg)))
            assert issued.principal.subject == "alice"
    skipped = [r for r in caplog.records if r.getMessage() == "a JWKS entry was skipped"]
    assert len(skipped) == len(ODD_ENTRIES) + 1 and {getattr(r, "issuer", "") for r in skipped} == {
        idp.issuer
    }

    # A document of nothing usable is a provider without keys (the token matches none), not a failed fetch.
    idp.server.document = {"keys": ODD_ENTRIES}
    rotated = make_idp_key("RS256", "rs256-new")  # an unknown kid: the document is fetched again
    idp.keys["RS256"] = rotated
    assert (await refusal(auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token()))))[:2] == (
        grpc.StatusCode.UNAUTHENTICATED,
        "OIDC_SIGNATURE_INVALID",
    )


async def test_an_inline_jwks_with_odd_entries_signs_in_and_later_edits_pass(auth: Auth, idp: Idp) -> None:
    key = make_idp_key("EdDSA", "inline-odd")
    issuer = f"https://odd.{idp.tenant_id}.example/"

    def provider(keys: list[Any]) -> tenant_policy_pb2.TenantPolicy:
        return tenant_policy_pb2.TenantPolicy(
            identity_providers=[
                tenant_policy_pb2.OidcProvider(
                    issuer=issuer, audiences=["parapet-odd"], jwks_json=json.dumps({"keys": keys})
                )
            ]
        )

    # Validation refuses only a document without one usable key.
    for useless in ([], ODD_ENTRIES):
        assert await refusal(auth.set_policy(idp.tenant_id, provider(useless))) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "POLICY_INVALID",
            ["policy.identity_providers[1].jwks_json"],
        )
    await auth.set_policy(idp.tenant_id, provider([*ODD_ENTRIES, key.jwk]))
    now = int(time.time())
    token = jwt.encode(
        {"iss": issuer, "aud": "parapet-odd", "sub": "odd", "exp": now + 60},
        key.private,
        algorithm="EdDSA",
        headers={"kid": "inline-odd"},
    )
    issued = await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=token))
    assert (issued.principal.subject, issued.principal.issuer) == ("odd", issuer)
    # An edit of something else entirely still validates the whole policy, odd entries and all.
    edited = await auth.set_policy(
        idp.tenant_id,
        tenant_policy_pb2.TenantPolicy(
            roles=[tenant_policy_pb2.RoleDefinition(role="reader", permissions=[perm.PERMISSION_CHAT])]
        ),
    )
    assert "reader" in {role.role for role in edited.roles}
