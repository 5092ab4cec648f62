"""The identity interceptor's accept/reject table over a real channel, and the key sources."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from parapet.kit.context import current_principal
from parapet.kit.errors import error_details
from parapet.kit.identity import (
    CachedKeySource,
    Principal,
    TokenRejected,
    TokenSigner,
    TokenVerifier,
    generate_signing_key,
    jwks_file_source,
)
from parapet.kit.testing import (
    StringValue,
    TestKeys,
    fast_settings,
    generic_app,
    health_status,
    make_test_keys,
    running,
    stream_caller,
    string_service,
    unary_caller,
)

SERVICE = "test.v1.Identity"
WHOAMI = f"/{SERVICE}/WhoAmI"
PUBLIC = f"/{SERVICE}/Public"
STREAM = f"/{SERVICE}/StreamWhoAmI"
PRINCIPAL = Principal(
    tenant_id="tenant-a",
    subject="user-1",
    roles=("member", "admin"),
    groups=("finance",),
    scopes=("chat",),
    credential_type="api_key",
    api_key_id="key-123",
)


def describe() -> str:
    principal = current_principal()
    return (
        "anonymous"
        if principal is None
        else f"{principal.tenant_id}/{principal.subject}/{','.join(principal.roles)}"
    )


async def whoami(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
    return StringValue(value=describe())


async def stream_whoami(
    request: StringValue, context: grpc.aio.ServicerContext
) -> AsyncIterator[StringValue]:
    yield StringValue(value=describe())


@pytest.fixture
async def channel(keys: TestKeys) -> AsyncIterator[grpc.aio.Channel]:
    handler = string_service(
        SERVICE, unary={"WhoAmI": whoami, "Public": whoami}, server_streaming={"StreamWhoAmI": stream_whoami}
    )
    app = generic_app(handler, keys=keys, service_names=(SERVICE,), public_methods=frozenset({PUBLIC}))
    async with (
        running(app, fast_settings()) as (_, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch,
    ):
        yield ch


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    values = {
        "iss": "parapet-auth",
        "aud": "parapet",
        "sub": "user-1",
        "iat": now,
        "nbf": now,
        "exp": now + 60,
        "jti": "j1",
        "tnt": "tenant-a",
    }
    values.update(overrides)
    return values


def unsigned(header: dict[str, Any], body: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}.{b64(signature)}"


def hs256_with_public_key(keys: TestKeys) -> str:
    """The classic key-confusion attack: HMAC keyed with the verifier's public key."""
    public_pem = keys.private_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    signing_input = unsigned({"alg": "HS256", "typ": "JWT", "kid": keys.kid}, claims()).rsplit(".", 1)[0]
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def signer(keys: TestKeys, **kwargs: Any) -> TokenSigner:
    return TokenSigner(keys.private_key, keys.kid, **kwargs)


# (case, function of the test keys giving the authorization value or None, expected reason or None=accepted)
CASES: list[tuple[str, Callable[[TestKeys], str | None], str | None]] = [
    ("valid", lambda k: f"Bearer {k.signer.sign(PRINCIPAL)}", None),
    ("valid, lower-case scheme", lambda k: f"bearer {k.signer.sign(PRINCIPAL)}", None),
    ("missing", lambda k: None, "TOKEN_MISSING"),
    ("not bearer", lambda k: f"Basic {k.signer.sign(PRINCIPAL)}", "TOKEN_INVALID"),
    ("empty bearer", lambda k: "Bearer ", "TOKEN_INVALID"),
    ("malformed", lambda k: "Bearer not-a-jwt", "TOKEN_INVALID"),
    ("garbage segments", lambda k: "Bearer a.b.c", "TOKEN_INVALID"),
    (
        "forged: another key, same kid",
        lambda k: f"Bearer {TokenSigner(generate_signing_key()[0], k.kid).sign(PRINCIPAL)}",
        "TOKEN_INVALID",
    ),
    (
        "unknown kid",
        lambda k: f"Bearer {TokenSigner(k.private_key, 'other-kid').sign(PRINCIPAL)}",
        "TOKEN_INVALID",
    ),
    ("expired", lambda k: f"Bearer {k.signer.sign(PRINCIPAL, now=time.time() - 600)}", "TOKEN_EXPIRED"),
    (
        "not yet valid",
        lambda k: f"Bearer {k.signer.sign(PRINCIPAL, now=time.time() + 120)}",
        "TOKEN_NOT_YET_VALID",
    ),
    (
        "wrong audience",
        lambda k: f"Bearer {signer(k, audience='billing-ui').sign(PRINCIPAL)}",
        "TOKEN_AUDIENCE_MISMATCH",
    ),
    ("wrong issuer", lambda k: f"Bearer {signer(k, issuer='evil').sign(PRINCIPAL)}", "TOKEN_ISSUER_MISMATCH"),
    ("alg none", lambda k: "Bearer " + unsigned({"alg": "none", "kid": k.kid}, claims()), "TOKEN_INVALID"),
    ("HS256 keyed with the public key", lambda k: f"Bearer {hs256_with_public_key(k)}", "TOKEN_INVALID"),
    (
        "oversized",
        lambda k: f"Bearer {k.signer.sign(PRINCIPAL, extra_claims={'pad': 'x' * 6500})}",
        "TOKEN_TOO_LARGE",
    ),
    (
        "no tenant claim",
        lambda k: (
            "Bearer "
            + __import__("jwt").encode(
                {key: value for key, value in claims().items() if key != "tnt"},
                k.private_key,
                algorithm="EdDSA",
                headers={"kid": k.kid},
            )
        ),
        "TOKEN_INVALID",
    ),
    (
        "tenant that would change NATS subjects",
        lambda k: f"Bearer {k.signer.sign(Principal(tenant_id='acme.>', subject='user-1'))}",
        "TOKEN_INVALID",
    ),
    (
        "non-string role",
        lambda k: f"Bearer {k.signer.sign(PRINCIPAL, extra_claims={'roles': [{'admin': True}]})}",
        "TOKEN_INVALID",
    ),
]


@pytest.mark.parametrize(("case", "authorization", "reason"), CASES, ids=[case[0] for case in CASES])
async def test_identity_table(
    channel: grpc.aio.Channel,
    keys: TestKeys,
    case: str,
    authorization: Callable[[TestKeys], str | None],
    reason: str | None,
) -> None:
    value = authorization(keys)
    metadata = () if value is None else (("authorization", value),)
    for call in ("unary", "stream"):
        try:
            if call == "unary":
                answer = (await unary_caller(channel, WHOAMI)(StringValue(), metadata=metadata)).value
            else:
                call = stream_caller(channel, STREAM)(StringValue(), metadata=metadata)
                (answer,) = [m.value async for m in call]
        except grpc.aio.AioRpcError as error:
            details = error_details(error)
            assert reason is not None, f"{case} ({call}) was rejected: {details}"
            assert details.code == grpc.StatusCode.UNAUTHENTICATED
            assert details.reason == reason, f"{case} ({call})"
            assert details.error_info is not None and details.error_info.domain == "parapet.dev"
        else:
            assert reason is None, f"{case} ({call}) was accepted"
            assert answer == "tenant-a/user-1/member,admin"


async def test_public_method_and_health_need_no_token(channel: grpc.aio.Channel) -> None:
    assert (await unary_caller(channel, PUBLIC)(StringValue())).value == "anonymous"
    assert await health_status(channel) == 1  # SERVING: a service with no dependencies


async def test_principal_never_leaks_into_the_next_call(channel: grpc.aio.Channel, keys: TestKeys) -> None:
    for _ in range(3):
        await unary_caller(channel, WHOAMI)(StringValue(), metadata=keys.metadata(PRINCIPAL))
        assert (await unary_caller(channel, PUBLIC)(StringValue())).value == "anonymous"


async def test_no_key_source_refuses_every_token(keys: TestKeys) -> None:
    handler = string_service(SERVICE, unary={"WhoAmI": whoami})
    async with (
        running(generic_app(handler, service_names=(SERVICE,)), fast_settings()) as (_, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unary_caller(channel, WHOAMI)(StringValue(), metadata=keys.metadata())
    assert error_details(caught.value).reason == "TOKEN_INVALID"


async def test_verifier_round_trips_every_principal_field(keys: TestKeys) -> None:
    principal = Principal(
        "t",
        "s",
        roles=("r",),
        groups=("g1", "g2"),
        scopes=("chat",),
        credential_type="oidc_token",
        external_token_id="oidc-1",
        issuer="https://idp.example",
        permissions=("chat", "documents.read"),
    )
    verifier = TokenVerifier(keys.key_source())
    assert await verifier.verify(keys.signer.sign(principal)) == principal
    assert Principal.from_proto(principal.to_proto()) == principal
    # "No permissions resolved" and "no permission at all" stay apart, in the token and in the proto.
    for resolved in (None, ()):
        other = Principal("t", "s", roles=("admin",), permissions=resolved)
        assert await verifier.verify(keys.signer.sign(other)) == other
        assert Principal.from_proto(other.to_proto()) == other
    assert principal.to_proto().credential_type == 2  # CREDENTIAL_TYPE_OIDC_TOKEN


def test_signer_refuses_long_lived_tokens(keys: TestKeys) -> None:
    with pytest.raises(ValueError):
        TokenSigner(keys.private_key, keys.kid, ttl_seconds=301)


async def test_cached_key_source_refetches_unknown_kid_rate_limited() -> None:
    old, new = make_test_keys("old"), make_test_keys("new")
    published = {"keys": [old.jwk]}
    now = [0.0]

    async def fetch() -> dict[str, Any]:
        return published

    source = CachedKeySource(fetch, min_refetch_seconds=10, clock=lambda: now[0])
    verifier = TokenVerifier(source)
    await verifier.verify(old.token())
    assert source.fetch_count == 1
    published = {"keys": [old.jwk, new.jwk]}  # rotation: the new key appears
    now[0] = 11.0
    await verifier.verify(new.token())  # unknown kid -> refetch
    assert source.fetch_count == 2
    for _ in range(5):  # made-up kids: at most one fetch per interval
        assert await source.get_key("made-up") is None
    assert source.fetch_count == 2
    now[0] = 22.0
    assert await source.get_key("made-up") is None
    assert source.fetch_count == 3


async def test_jwks_file_source_picks_up_rotation(tmp_path: Path) -> None:
    old, new = make_test_keys("old"), make_test_keys("new")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(old.jwks()))
    verifier = TokenVerifier(jwks_file_source(path, min_refetch_seconds=0))
    assert (await verifier.verify(old.token())).subject == "user-1"
    path.write_text(json.dumps({"keys": [old.jwk, new.jwk]}))
    assert (await verifier.verify(new.token())).subject == "user-1"


async def test_failed_refresh_keeps_cached_keys() -> None:
    keys = make_test_keys()
    calls = [0]

    async def fetch() -> dict[str, Any]:
        calls[0] += 1
        if calls[0] > 1:
            raise OSError("auth service down")
        return keys.jwks()

    source = CachedKeySource(fetch, min_refetch_seconds=0, max_age_seconds=0)
    verifier = TokenVerifier(source)
    await verifier.verify(keys.token())
    await verifier.verify(keys.token())  # refresh fails, the cached key still verifies
    assert calls[0] >= 2


class _CountingKeys:
    """A key source that counts lookups: one lookup per signature verification."""

    def __init__(self, keys: TestKeys) -> None:
        self._inner = keys.key_source()
        self.lookups = 0

    async def get_key(self, kid: str) -> Any:
        self.lookups += 1
        return await self._inner.get_key(kid)


async def test_verified_tokens_are_cached_but_still_expire_on_time(keys: TestKeys) -> None:
    source = _CountingKeys(keys)
    verifier = TokenVerifier(source, leeway_seconds=0)
    token = keys.token()
    first = await verifier.verify(token)
    assert await verifier.verify(token) == first
    assert source.lookups == 1  # the second call skipped the signature check

    # One byte changed in the signature: not the cached token, so it is verified (and rejected).
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(TokenRejected) as rejected:
        await verifier.verify(tampered)
    assert rejected.value.reason == "TOKEN_INVALID"

    # A token with one second left stops working when it expires, cached or not.
    short = keys.signer.sign(keys.principal, now=time.time() - (keys.signer.ttl_seconds - 1))
    await verifier.verify(short)
    await asyncio.sleep(1.2)
    with pytest.raises(TokenRejected) as expired:
        await verifier.verify(short)
    assert expired.value.reason == "TOKEN_EXPIRED"


async def test_token_cache_is_bounded(keys: TestKeys) -> None:
    verifier = TokenVerifier(keys.key_source(), cache_size=3)
    for _ in range(10):
        await verifier.verify(keys.token())
    assert len(verifier._cache) == 3


async def test_a_service_that_requires_resolved_permissions_refuses_tokens_without_them(
    keys: TestKeys,
) -> None:
    """identity_require_permissions: once every auth replica writes `perm`, a token without it (an older auth's,
    or one signed outside auth) is refused instead of being judged by its role names."""
    handler = string_service(SERVICE, unary={"WhoAmI": whoami})
    app = generic_app(handler, keys=keys, service_names=(SERVICE,))
    async with (
        running(app, fast_settings(identity_require_permissions=True)) as (_, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        resolved = Principal("tenant-a", "user-1", roles=("member", "admin"), permissions=("chat",))
        answer = await unary_caller(channel, WHOAMI)(StringValue(), metadata=keys.metadata(resolved))
        assert answer.value == "tenant-a/user-1/member,admin"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unary_caller(channel, WHOAMI)(StringValue(), metadata=keys.metadata(PRINCIPAL))
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_PERMISSIONS_MISSING")


class _SlowAuth:
    """A real gRPC server answering auth's GetJwks with ``keys`` after ``delay`` seconds (auth under load)."""

    def __init__(self, keys: TestKeys, delay: float) -> None:
        self.keys, self.delay, self.answered = keys, delay, 0

    async def get_jwks(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        from google.protobuf.json_format import ParseDict

        from parapet.auth.v1 import auth_service_pb2

        await asyncio.sleep(self.delay)
        self.answered += 1
        return ParseDict(self.keys.jwks(), auth_service_pb2.GetJwksResponse(), ignore_unknown_fields=True)

    def handler(self) -> grpc.GenericRpcHandler:
        from parapet.auth.v1 import auth_service_pb2

        method = grpc.unary_unary_rpc_method_handler(
            self.get_jwks,
            request_deserializer=auth_service_pb2.GetJwksRequest.FromString,
            response_serializer=auth_service_pb2.GetJwksResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler("parapet.auth.v1.AuthService", {"GetJwks": method})


async def test_a_key_fetch_outlives_the_caller_that_started_it(keys: TestKeys) -> None:
    """The first call after a start (or a key rotation) fetches auth's keys for every call waiting on them. When
    that caller gave up (its deadline, a cancel), the fetch was cancelled with it, yet counted as done: every other
    caller was refused UNAUTHENTICATED (unknown key) until the refetch interval (10 s) had passed."""
    from parapet.kit.identity import auth_jwks_source

    auth = _SlowAuth(keys, delay=0.6)
    auth_server = grpc.aio.server()
    auth_server.add_generic_rpc_handlers((auth.handler(),))
    auth_port = auth_server.add_insecure_port("127.0.0.1:0")
    await auth_server.start()
    handler = string_service(SERVICE, unary={"WhoAmI": whoami})
    app = generic_app(handler, service_names=(SERVICE,))
    app = dataclasses.replace(
        app, key_source=lambda settings: auth_jwks_source(f"127.0.0.1:{auth_port}", settings)
    )
    try:
        async with (
            running(app, fast_settings()) as (_, port),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            call = unary_caller(channel, WHOAMI)
            impatient = asyncio.ensure_future(call(StringValue(), metadata=keys.metadata(), timeout=0.2))
            await asyncio.sleep(0.05)
            patient = asyncio.ensure_future(call(StringValue(), metadata=keys.metadata(), timeout=10))
            with pytest.raises(grpc.aio.AioRpcError) as gave_up:
                await impatient
            assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert (await patient).value == "tenant-a/user-1/member"
            # And the next caller finds the keys fetched: no second fetch, no refusal.
            assert (
                await call(StringValue(), metadata=keys.metadata(), timeout=10)
            ).value == "tenant-a/user-1/member"
            assert auth.answered == 1
    finally:
        await auth_server.stop(0)
