"""The internal identity token: a short-lived EdDSA (Ed25519) JWT holding the caller's Principal.

The auth service signs it (:class:`TokenSigner`); every service verifies it locally
(:class:`TokenVerifier`) with public keys from a :class:`KeySource`, so no RPC to auth is needed per call.

Claims: ``iss``, ``aud``, ``sub``, ``exp``, ``iat``, ``nbf``, ``jti`` and
``tnt`` (tenant id), ``roles``, ``groups``, ``scp`` (scopes), and when set ``cty`` (credential type),
``key`` (API key id), ``tok`` (the external OIDC token's id) and ``idp`` (the external issuer). The header names the key in
``kid``. Only ``EdDSA`` is accepted: ``alg: none``, HMAC and RSA tokens are refused before any key is
looked up, so a public key can never be used as an HMAC secret.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from parapet.kit.errors import Unauthenticated

log = logging.getLogger(__name__)

ALGORITHM = "EdDSA"
MAX_TTL_SECONDS = 300
MAX_TOKEN_BYTES = 8 * 1024
_REQUIRED_CLAIMS = ["iss", "aud", "sub", "exp", "iat", "nbf", "jti", "tnt"]

Jwks = Mapping[str, Any]


@dataclass(frozen=True)
class Principal:
    """Who is calling: verified, never taken from a request field. Mirrors ``parapet.identity.v1.Principal``."""

    tenant_id: str
    subject: str
    roles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    # "api_key", "oidc_token" or "service" (the proto's CredentialType without its prefix); "" = unspecified.
    credential_type: str = ""
    api_key_id: str = ""  # the API key used, for credential_type "api_key"
    external_token_id: str = ""  # the external OIDC token's jti, for credential_type "oidc_token"
    issuer: str = ""  # the external credential's issuer (OIDC iss), for audit
    # The permission names auth resolved when it issued the token: the roles under the tenant policy, narrowed by
    # the scopes (claim "perm"). None when the token carries none (one auth issued before it resolved them, or one
    # a test or tool signed): parapet.kit.permissions then falls back to role and scope names.
    permissions: tuple[str, ...] | None = None
    # Who obtained this token on the principal's behalf (RFC 8693 "act": "tenant/subject" of auth's
    # IssueDelegatedToken caller); "" for a token the principal's own credential got. Auth administers nothing
    # for a delegated token. Token-only: the proto Principal has no such field.
    actor: str = ""

    def has_role(self, role: str) -> bool:
        return role in self.roles

    def to_proto(self) -> Any:
        """The ``parapet.identity.v1.Principal`` message."""
        from parapet.identity.v1 import principal_pb2

        credential = f"CREDENTIAL_TYPE_{self.credential_type.upper() or 'UNSPECIFIED'}"
        return principal_pb2.Principal(
            tenant_id=self.tenant_id,
            subject=self.subject,
            roles=self.roles,
            groups=self.groups,
            scopes=self.scopes,
            credential_type=principal_pb2.CredentialType.Value(credential),
            api_key_id=self.api_key_id,
            external_token_id=self.external_token_id,
            issuer=self.issuer,
            permissions=None
            if self.permissions is None
            else principal_pb2.PermissionSet(names=self.permissions),
        )

    @classmethod
    def from_proto(cls, message: Any) -> Principal:
        from parapet.identity.v1 import principal_pb2

        credential = principal_pb2.CredentialType.Name(message.credential_type).removeprefix(
            "CREDENTIAL_TYPE_"
        )
        return cls(
            tenant_id=message.tenant_id,
            subject=message.subject,
            roles=tuple(message.roles),
            groups=tuple(message.groups),
            scopes=tuple(message.scopes),
            credential_type="" if credential == "UNSPECIFIED" else credential.lower(),
            api_key_id=message.api_key_id,
            external_token_id=message.external_token_id,
            issuer=message.issuer,
            permissions=tuple(message.permissions.names) if message.HasField("permissions") else None,
        )


class TokenRejected(Unauthenticated):
    """An identity token that must not be trusted; ``reason`` says why (e.g. ``TOKEN_EXPIRED``)."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(public_key: Ed25519PublicKey, kid: str) -> dict[str, str]:
    """The RFC 8037 JWK of an Ed25519 public key."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw), "kid": kid, "alg": ALGORITHM, "use": "sig"}


def thumbprint_kid(public_key: Ed25519PublicKey) -> str:
    """The RFC 7638 JWK thumbprint of ``public_key``: a ``kid`` that follows from the key alone."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    x = _b64url(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw))
    # RFC 7638: the required members only, lexicographic order, no whitespace.
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def generate_signing_key(kid: str | None = None) -> tuple[Ed25519PrivateKey, dict[str, str]]:
    """A new Ed25519 key and its public JWK; ``kid`` defaults to a random id."""
    private_key = Ed25519PrivateKey.generate()
    return private_key, public_jwk(private_key.public_key(), kid or uuid.uuid4().hex[:16])


class TokenSigner:
    """Signs Principals into internal tokens (the auth service, and tests)."""

    def __init__(
        self,
        private_key: Ed25519PrivateKey,
        kid: str,
        *,
        issuer: str = "parapet-auth",
        audience: str = "parapet",
        ttl_seconds: float = MAX_TTL_SECONDS,
    ) -> None:
        if not 0 < ttl_seconds <= MAX_TTL_SECONDS:
            raise ValueError(f"ttl_seconds must be in (0, {MAX_TTL_SECONDS}]")
        self._key = private_key
        self.kid = kid
        self.issuer = issuer
        self.audience = audience
        self.ttl_seconds = ttl_seconds

    def sign(
        self, principal: Principal, *, now: float | None = None, extra_claims: Mapping[str, Any] | None = None
    ) -> str:
        """A token for ``principal`` valid from ``now`` (default: the current time) for the signer's ttl."""
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": principal.subject,
            "iat": issued,
            "nbf": issued,
            "exp": issued + int(self.ttl_seconds),
            "jti": uuid.uuid4().hex,
            "tnt": principal.tenant_id,
            "roles": list(principal.roles),
            "groups": list(principal.groups),
            "scp": list(principal.scopes),
        }
        optional = {
            "cty": principal.credential_type,
            "key": principal.api_key_id,
            "tok": principal.external_token_id,
            "idp": principal.issuer,
        }
        claims.update({name: value for name, value in optional.items() if value})
        if principal.permissions is not None:
            claims["perm"] = list(principal.permissions)
        claims.update(extra_claims or {})
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})


class KeySource(Protocol):
    """Where verification keys come from."""

    async def get_key(self, kid: str) -> Ed25519PublicKey | None:
        """The public key named ``kid``, or None when it is unknown."""
        ...


def keys_from_jwks(jwks: Jwks) -> dict[str, Ed25519PublicKey]:
    """The Ed25519 signing keys of a JWKS document; keys of other types are ignored, not trusted."""
    keys: dict[str, Ed25519PublicKey] = {}
    for entry in jwks.get("keys", []):
        if entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519" or not entry.get("kid"):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        raw = base64.urlsafe_b64decode(entry["x"] + "=" * (-len(entry["x"]) % 4))
        keys[str(entry["kid"])] = Ed25519PublicKey.from_public_bytes(raw)
    return keys


def read_jwks_file(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


class StaticJwks:
    """A fixed set of keys (a JWKS dict)."""

    def __init__(self, jwks: Jwks) -> None:
        self._keys = keys_from_jwks(jwks)

    @classmethod
    def from_file(cls, path: Path) -> StaticJwks:
        return cls(read_jwks_file(path))

    async def get_key(self, kid: str) -> Ed25519PublicKey | None:
        return self._keys.get(kid)


class CachedKeySource:
    """Keys fetched by ``fetch`` (a JWKS file read, or the auth service's JWKS RPC) and cached.

    An unknown ``kid`` triggers a refetch, because after a key rotation tokens with the new key arrive
    before the cache knows it; refetches are rate-limited (``min_refetch_seconds``) so a flood of tokens
    with made-up kids cannot turn into a flood of fetches. The cache is also refreshed after ``max_age``.

    A fetch serves every caller waiting for keys, so it belongs to none of them: it runs in a task of its own,
    in a context of its own (no caller's deadline, token or request id reaches the RPC to auth), and a caller
    that gives up stops waiting without stopping it. Run in the first caller's task, it was cancelled or timed
    out with that caller and still counted as a fetch: every other caller was refused (unknown key) until the
    refetch interval had passed.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Jwks]],
        *,
        min_refetch_seconds: float = 10.0,
        max_age_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._min_refetch = min_refetch_seconds
        self._max_age = max_age_seconds
        self._clock = clock
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._fetched_at: float | None = None
        self._fetching: asyncio.Task[None] | None = None
        self.fetch_count = 0

    def _due(self, *, force: bool) -> bool:
        if self._fetched_at is None:
            return True
        age = self._clock() - self._fetched_at
        return age >= self._min_refetch and (force or age >= self._max_age)

    async def _refresh(self, *, force: bool) -> None:
        """Wait for the fetch under way, else start one when it is due (callers arriving meanwhile share it)."""
        if self._fetching is None:
            if not self._due(force=force):
                return
            self.fetch_count += 1
            self._fetched_at = self._clock()  # a failed fetch counts too: auth down is not asked every call
            self._fetching = asyncio.create_task(
                self._fetch_keys(), name="parapet-identity-keys", context=contextvars.Context()
            )
        await asyncio.shield(self._fetching)

    async def _fetch_keys(self) -> None:
        try:
            self._keys = keys_from_jwks(await self._fetch())
        except Exception:
            # Keep the keys we have: a failed refresh must not log everyone out.
            log.warning(
                "fetching identity keys failed; keeping %d cached keys", len(self._keys), exc_info=True
            )
        finally:
            self._fetching = None

    async def get_key(self, kid: str) -> Ed25519PublicKey | None:
        if self._fetched_at is None or self._clock() - self._fetched_at >= self._max_age:
            await self._refresh(force=False)
        key = self._keys.get(kid)
        if key is None:
            await self._refresh(force=True)
            key = self._keys.get(kid)
        return key


def jwks_file_source(path: Path, **kwargs: Any) -> CachedKeySource:
    """A JWKS file, re-read on an unknown kid so keys can rotate without a restart."""

    async def fetch() -> Jwks:
        return await asyncio.to_thread(read_jwks_file, path)

    return CachedKeySource(fetch, **kwargs)


def auth_jwks_source(target: str, settings: Any = None, **kwargs: Any) -> CachedKeySource:
    """The auth service's ``GetJwks`` RPC at ``target`` (``host:port``), cached: for services without a JWKS file.

    ``settings`` (the service's ``ServiceSettings``) gives the channel its TLS configuration. Each fetch
    opens a short-lived kit channel: fetches are rare (max age, or an unknown kid, rate-limited).
    """
    from google.protobuf.json_format import MessageToDict

    from parapet.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
    from parapet.kit.clients import channel

    async def fetch() -> Jwks:
        async with channel(target, settings) as auth_channel:
            stub = auth_service_pb2_grpc.AuthServiceStub(auth_channel)
            response = await stub.GetJwks(auth_service_pb2.GetJwksRequest(), timeout=5.0)
        return {"keys": [MessageToDict(key, preserving_proto_field_name=True) for key in response.keys]}

    return CachedKeySource(fetch, **kwargs)


class NoKeys:
    """Used when no key source is configured: every token is refused."""

    async def get_key(self, kid: str) -> Ed25519PublicKey | None:
        return None


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise TokenRejected("identity token claims are malformed", reason="TOKEN_INVALID")
    if not all(isinstance(item, str) for item in value):
        raise TokenRejected("identity token claims are malformed", reason="TOKEN_INVALID")
    return tuple(value)


# The contract's tenant id form (parapet.identity.v1.Principal): it also names NATS subjects
# (`parapet.usage.v1.<tenant>`), where a '.', '*' or '>' would change the subject hierarchy.
TENANT_ID_PATTERN = re.compile(r"[a-z0-9-]{1,63}")


@dataclass
class TokenVerifier:
    """Verifies internal tokens locally: size, algorithm, key, signature, exp/nbf, audience, issuer."""

    key_source: KeySource
    audience: str = "parapet"
    issuer: str = "parapet-auth"
    leeway_seconds: float = 5.0
    max_token_bytes: int = MAX_TOKEN_BYTES
    # Refuse a token without the permissions auth resolved (`perm`) rather than fall back to its role and scope
    # names (parapet.kit.permissions): for deployments where every auth replica issues them.
    require_permissions: bool = False

    # Verified tokens are remembered so the Ed25519 check runs once per token, not once per call: the same
    # token rides on every hop of a request and on a principal's requests for its lifetime. The key is the
    # whole token, so only the identical bytes hit; an entry lives at most ``cache_seconds`` (bounding how
    # long a key removed from the JWKS keeps working) and never past the token's own expiry.
    cache_seconds: float = 30.0
    cache_size: int = 10_000
    _cache: dict[str, tuple[Principal, float]] = field(default_factory=dict, init=False, repr=False)

    async def verify(self, token: str) -> Principal:
        """The Principal in ``token``; raises :class:`TokenRejected` with the reason otherwise."""
        cached = self._cache.get(token)
        if cached is not None:
            if time.time() < cached[1]:
                return cached[0]
            del self._cache[token]
        principal, expires = await self._verify_uncached(token)
        if self.require_permissions and principal.permissions is None:
            raise TokenRejected(
                "identity token carries no resolved permissions (issued by an earlier auth?)",
                reason="TOKEN_PERMISSIONS_MISSING",
            )
        if self.cache_size > 0:
            if len(self._cache) >= self.cache_size:
                del self._cache[next(iter(self._cache))]  # the oldest entry
            self._cache[token] = (principal, min(expires, time.time() + self.cache_seconds))
        return principal

    async def _verify_uncached(self, token: str) -> tuple[Principal, float]:
        if len(token) > self.max_token_bytes:
            raise TokenRejected("identity token is too large", reason="TOKEN_TOO_LARGE")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("identity token is malformed", reason="TOKEN_INVALID") from None
        if header.get("alg") != ALGORITHM:
            raise TokenRejected("identity token algorithm is not allowed", reason="TOKEN_INVALID")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenRejected("identity token names no key", reason="TOKEN_INVALID")
        key = await self.key_source.get_key(kid)
        if key is None:
            raise TokenRejected("identity token is signed by an unknown key", reason="TOKEN_INVALID")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_seconds,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("identity token has expired", reason="TOKEN_EXPIRED") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("identity token is not valid yet", reason="TOKEN_NOT_YET_VALID") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected(
                "identity token is for another audience", reason="TOKEN_AUDIENCE_MISMATCH"
            ) from None
        except jwt.InvalidIssuerError:
            raise TokenRejected(
                "identity token has an unexpected issuer", reason="TOKEN_ISSUER_MISMATCH"
            ) from None
        except jwt.PyJWTError:
            raise TokenRejected("identity token is invalid", reason="TOKEN_INVALID") from None
        # exp is required and was checked above; without the leeway here a cached token dies on time.
        return _principal(claims), float(claims["exp"])


def _principal(claims: Mapping[str, Any]) -> Principal:
    tenant, subject = claims.get("tnt"), claims.get("sub")
    if not isinstance(tenant, str) or not tenant or not isinstance(subject, str) or not subject:
        raise TokenRejected("identity token names no tenant or subject", reason="TOKEN_INVALID")
    if not TENANT_ID_PATTERN.fullmatch(tenant):
        raise TokenRejected("identity token names a malformed tenant", reason="TOKEN_INVALID")

    def text(name: str) -> str:
        value = claims.get(name, "")
        return value if isinstance(value, str) else ""

    return Principal(
        tenant_id=tenant,
        subject=subject,
        roles=_strings(claims.get("roles", [])),
        groups=_strings(claims.get("groups", [])),
        scopes=_strings(claims.get("scp", [])),
        credential_type=text("cty"),
        api_key_id=text("key"),
        external_token_id=text("tok"),
        issuer=text("idp"),
        permissions=_strings(claims["perm"]) if "perm" in claims else None,
        actor=_actor(claims.get("act")),
    )


def _actor(claim: Any) -> str:
    """``"tenant/subject"`` of an ``act`` claim; a claim present but unreadable still marks the token delegated
    (``"?"``): only auth signs tokens, so it is no forgery, and reading it as none would lift the restriction."""
    if claim is None:
        return ""
    if isinstance(claim, Mapping):
        tenant, subject = claim.get("tnt"), claim.get("sub")
        if isinstance(tenant, str) and isinstance(subject, str) and (tenant or subject):
            return f"{tenant}/{subject}"
    return "?"
