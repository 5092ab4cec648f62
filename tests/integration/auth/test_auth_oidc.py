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
from parapet.kit.errors import Unavailable, error_details
from parapet.kit.testing import refusal
from services.auth import oidc
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


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged(issuer: str, audience: str) -> str:
    """A token naming ``issuer`` that no key of it signed: what anyone can send without any secret."""
    header = _b64(json.dumps({"alg": "RS256", "kid": "rs256-1"}).encode())
    claims = {"iss": issuer, "aud": audience, "sub": "mallory", "exp": int(time.time()) + 60}
    return f"{header}.{_b64(json.dumps(claims).encode())}.{_b64(b'x' * 256)}"


async def test_forged_tokens_naming_an_issuer_do_not_lock_its_tenant_out(auth: Auth, idp: Idp) -> None:
    # Anyone can name a tenant's issuer (it is in every token the provider issues) in a token signed by no
    # key of it. Until 2026-12-06 ten such failures a minute, from any clients (or ten users presenting
    # expired tokens), throttled every cold sign-in of the whole tenant: failures counted per issuer.
    for i in range(12):
        client = (("x-parapet-client-ip", f"192.0.2.{i}"),)
        code, reason, _ = await refusal(
            auth.auth.Authenticate(
                apb.AuthenticateRequest(oidc_token=_forged(idp.issuer, idp.audience)), metadata=client
            )
        )
        assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "OIDC_SIGNATURE_INVALID"), i
    issued = await auth.auth.Authenticate(
        apb.AuthenticateRequest(oidc_token=idp.token(sub="erin")),
        metadata=(("x-parapet-client-ip", "198.51.100.9"),),
    )
    assert issued.principal.subject == "erin"
    # The forging client itself is still throttled (per client, as for API keys).
    forger = (("x-parapet-client-ip", "203.0.113.66"),)
    for _ in range(50):
        await refusal(
            auth.auth.Authenticate(
                apb.AuthenticateRequest(oidc_token=_forged(idp.issuer, idp.audience)), metadata=forger
            )
        )
    code, reason, _ = await refusal(
        auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token()), metadata=forger)
    )
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "AUTHENTICATION_THROTTLED")


async def test_claims_no_text_column_can_hold_are_refused_or_dropped_never_internal(
    auth: Auth, idp: Idp
) -> None:
    # An issuer with NUL needs no signature to reach the database: it gave INTERNAL until 2026-12-06.
    code, reason, _ = await refusal(
        auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=_forged("https://x\x00y/", idp.audience)))
    )
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "OIDC_ISSUER_UNKNOWN")
    code, reason, _ = await refusal(
        auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token(sub="a\x00b")))
    )
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "OIDC_TOKEN_INVALID")
    # Roles, groups or a jti no service could store are no role, group or id: dropped, the rest kept.
    issued = await auth.auth.Authenticate(
        apb.AuthenticateRequest(
            oidc_token=idp.token(
                sub="nul-claims", roles=["analyst", "x\x00"], groups=["finance", "\x00"], jti="j\x00"
            )
        )
    )
    principal = issued.principal
    assert (list(principal.roles), list(principal.groups)) == (["analyst"], ["finance"])
    assert principal.external_token_id == ""


async def test_a_token_expired_within_the_clock_skew_gets_no_dead_internal_token(
    auth: Auth, idp: Idp
) -> None:
    # The provider's skew (30 s here) let a token that expired 20 s ago through, and the internal token,
    # capped at the credential's exp, was issued already expired (every service then refused it): Authenticate
    # said OK with a useless token until 2026-12-06. Now the caller hears that its token expired.
    now = int(time.time())
    code, reason, _ = await refusal(
        auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token(sub="late", exp=now - 20)))
    )
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "OIDC_TOKEN_EXPIRED")
    issued = await auth.auth.Authenticate(
        apb.AuthenticateRequest(oidc_token=idp.token(sub="late", exp=now + 30))
    )
    assert time.time() < issued.expire_time.seconds <= now + 30


async def _trust_jwks_url(auth: Auth, idp: Idp, url: str) -> str:
    """A second provider of ``idp``'s tenant whose keys are at ``url``; returns its issuer."""
    issuer = f"https://slow.{idp.tenant_id}.example/"
    await auth.set_policy(
        idp.tenant_id,
        tenant_policy_pb2.TenantPolicy(
            identity_providers=[
                tenant_policy_pb2.OidcProvider(issuer=issuer, audiences=[idp.audience], jwks_uri=url)
            ]
        ),
    )
    return issuer


async def test_a_huge_jwks_document_is_a_failed_fetch_not_read_into_memory(auth: Auth, idp: Idp) -> None:
    # A provider's URL is a tenant admin's to set; its answer was read whole into auth's memory, shared by
    # every tenant. A real JWKS is a few KiB: one over the bound counts as a failed fetch.
    idp.server.document = {"keys": [k.jwk for k in idp.keys.values()], "padding": "x" * (8 << 20)}
    code, reason, _ = await refusal(auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token())))
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
    idp.server.document = {"keys": [k.jwk for k in idp.keys.values()]}
    assert (await auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=idp.token()))).principal


async def test_a_jwks_url_that_drips_its_answer_gives_up_in_bounded_time(auth: Auth, idp: Idp) -> None:
    # httpx's timeout bounds each read, not the whole fetch: a server sending a byte a second held every
    # sign-in of the provider (they wait on the fetch) until each caller's own deadline.
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    stop = threading.Event()

    class Drip(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"keys": [')
            self.wfile.flush()
            while not stop.wait(1.0):
                self.wfile.write(b" ")
                self.wfile.flush()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        issuer = await _trust_jwks_url(auth, idp, f"http://127.0.0.1:{server.server_address[1]}/jwks")
        key = idp.keys["RS256"]
        token = jwt.encode(
            {"iss": issuer, "aud": idp.audience, "sub": "drip", "exp": int(time.time()) + 60},
            key.private,
            algorithm="RS256",
            headers={"kid": key.kid},
        )
        started = time.monotonic()
        code, reason, _ = await refusal(
            auth.auth.Authenticate(apb.AuthenticateRequest(oidc_token=token), timeout=15)
        )
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
        assert time.monotonic() - started < 10
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


async def test_a_jwks_uri_on_a_non_public_address_is_fetched_only_when_allowed(idp: Idp) -> None:
    # The URL is a tenant admin's choice and auth fetches it from inside the operator's network: by default a
    # host resolving to loopback, private or link-local addresses is a failed fetch (the server is never asked);
    # PARAPET_AUTH_OIDC_JWKS_PRIVATE_ADDRESSES lets an identity provider inside that network be used.
    provider = tenant_policy_pb2.OidcProvider(
        issuer=idp.issuer, audiences=[idp.audience], jwks_uri=idp.server.url
    )
    token = oidc.inspect(idp.token())
    fetched = idp.server.fetches
    with pytest.raises(Unavailable):
        await oidc.JwksCache().key(provider, token)
    assert idp.server.fetches == fetched, "a private address was asked"
    for host in ("localhost", "10.1.2.3", "169.254.169.254", "[::1]", "100.64.0.1"):
        with pytest.raises(ValueError, match="not a public address"):
            await oidc.require_public_host(f"https://{host}/jwks")
    assert await oidc.JwksCache(private_addresses=True).key(provider, token)
    assert idp.server.fetches == fetched + 1
