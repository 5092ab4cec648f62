"""Validation of OIDC JWTs from a tenant's own identity providers (``OidcProvider`` in its policy).

Order of checks, each before anything costlier: size, structure, ``alg`` in the allow-list (RS256, ES256,
EdDSA; never ``none`` or HMAC, so a public key can never act as an HMAC secret), (issuer, audience) routed to
a tenant (by (issuer, ``azp``) when the audiences name several), key by ``kid`` (from the routed provider's
JWKS: inline JSON, or a URL fetched, cached per (issuer, URL) and refetched on an unknown ``kid`` at most once
per ``min_refetch_seconds``), signature with the key whose type must fit the ``alg``, then
``iss``/``aud``/``exp``/``nbf``/``iat`` with the provider's bounded clock skew.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any, TypeGuard
from urllib.parse import urlparse

import httpx
import jwt
from jwt import PyJWK

from parapet.auth.v1 import tenant_policy_pb2
from parapet.kit.errors import Unauthenticated, Unavailable

log = logging.getLogger(__name__)

ALLOWED_ALGORITHMS = ("RS256", "ES256", "EdDSA")
MAX_TOKEN_BYTES = 16 * 1024
MAX_SKEW_SECONDS = 300.0
DEFAULT_SKEW_SECONDS = 60.0
JWKS_MAX_AGE_SECONDS = 300.0
# A provider's JWKS is a few KiB; its URL is a tenant admin's to choose, and the answer is read into the memory
# every tenant shares, so a longer answer is a failed fetch (as a document that is no JWKS is).
MAX_JWKS_BYTES = 1 << 20


def rejected(reason: str, message: str) -> Unauthenticated:
    return Unauthenticated(message, reason=reason)


def storable(value: object, max_length: int) -> TypeGuard[str]:
    """Whether a claim is a non-empty string a PostgreSQL text column (ours, or a service's the principal
    reaches) can hold: NUL it cannot, and the database error would be an INTERNAL for a token's content."""
    return isinstance(value, str) and 0 < len(value) <= max_length and "\x00" not in value


@dataclass(frozen=True)
class UnverifiedToken:
    token: str
    alg: str
    kid: str
    issuer: str
    # The ``aud`` values a database column can hold (a string is one value): what routes the token to its tenant.
    audiences: tuple[str, ...] = ()
    # ``azp`` (OIDC Core 2), the client the token was issued to, if a string a column can hold: what picks the
    # tenant when the audiences name several (a provider's generic audience, such as Keycloak's ``account``).
    authorized_party: str = ""


def _audiences(value: object) -> tuple[str, ...]:
    """``aud`` as its string values, unsigned as it is; anything else (no ``aud``, a number, an object) names
    no audience, and a value holding NUL names none a policy could list."""
    values = value if isinstance(value, list) else [value]
    return tuple(dict.fromkeys(v for v in values if storable(v, MAX_TOKEN_BYTES)))


def inspect(token: str) -> UnverifiedToken:
    """Header, issuer, audiences and authorized party of ``token`` without trusting any; raises for anything
    malformed or disallowed."""
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise rejected("OIDC_TOKEN_INVALID", "the OIDC token is malformed") from None
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise rejected("OIDC_ALGORITHM_REJECTED", "the OIDC token's algorithm is not allowed")
    issuer = claims.get("iss")
    # Checked before the issuer is looked up, unsigned as it is; no policy can name an issuer with NUL.
    if not storable(issuer, MAX_TOKEN_BYTES):
        raise rejected("OIDC_ISSUER_UNKNOWN", "the OIDC token names no issuer")
    kid = header.get("kid")
    azp = claims.get("azp")
    return UnverifiedToken(
        token,
        str(alg),
        kid if isinstance(kid, str) else "",
        issuer,
        _audiences(claims.get("aud")),
        azp if storable(azp, MAX_TOKEN_BYTES) else "",
    )


def skew(provider: tenant_policy_pb2.OidcProvider) -> float:
    if not provider.HasField("max_clock_skew"):
        return DEFAULT_SKEW_SECONDS
    return min(MAX_SKEW_SECONDS, provider.max_clock_skew.ToTimedelta().total_seconds())


# The key type (and curve) each allowed algorithm needs: a key of any other kind can verify none of our tokens.
_USABLE_KEYS = {"RSA": ("RS256", None), "EC": ("ES256", "P-256"), "OKP": ("EdDSA", "Ed25519")}


def _unusable(entry: Any) -> str | None:
    """Why a JWKS entry is of no use to us (None: usable): not an object, not a signature key, a key type,
    curve or ``alg`` that no allowed algorithm takes, or members that do not make a key."""
    if not isinstance(entry, dict):
        return "not an object"
    if entry.get("use", "sig") != "sig":
        return "not a signature key ('use')"
    kty = entry.get("kty")
    usable = _USABLE_KEYS.get(kty) if isinstance(kty, str) else None
    if usable is None:
        return "a key type no allowed algorithm takes"
    algorithm, curve = usable
    if curve is not None and entry.get("crv") != curve:
        return "a curve no allowed algorithm takes"
    if entry.get("alg", algorithm) != algorithm:
        return "meant for an algorithm not allowed ('alg')"
    try:
        PyJWK(entry, algorithm=algorithm)
    except Exception:  # untrusted JSON: any member may be of any type
        return "not a valid key"
    return None


def read_jwks(document: Any) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """The usable keys of a parsed JWKS document, and (index, why) for each entry skipped.

    The document must be an object whose ``keys`` is a list (RFC 7517 section 5), else ValueError: a provider
    serving other JSON counts as a failed fetch (UNAVAILABLE, old keys kept), not as an empty key set that
    would fail every token. Entries are another matter: RFC 7517 (section 5) says to ignore JWKs one does not
    understand, so an entry that is no object, or a key we cannot use, is skipped and the others still work.
    """
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("not a JWKS document: an object with a list of keys under 'keys'")
    usable: list[dict[str, Any]] = []
    skipped: list[tuple[int, str]] = []
    for index, entry in enumerate(entries):
        why = _unusable(entry)
        if why is None:
            usable.append(entry)
        else:
            skipped.append((index, why))
    return usable, skipped


def jwks_keys(document: Any, *, issuer: str = "") -> list[dict[str, Any]]:
    """``read_jwks``'s usable keys, each skipped entry logged as a warning."""
    usable, skipped = read_jwks(document)
    for index, why in skipped:
        log.warning("a JWKS entry was skipped", extra={"issuer": issuer, "index": index, "why": why})
    return usable


@functools.lru_cache(maxsize=256)
def _parsed_inline(issuer: str, jwks_json: str) -> tuple[dict[str, Any], ...]:
    """An inline JWKS parsed once per process (not per sign-in; its warnings logged once)."""
    try:
        return tuple(jwks_keys(json.loads(jwks_json), issuer=issuer))
    except (ValueError, RecursionError):
        # Policy validation refuses such a document; only a policy stored before it did has one, and a key
        # that cannot be read is no key (the token then matches none).
        log.warning("the inline JWKS is not a JWKS document", extra={"issuer": issuer})
        return ()


def _inline_keys(provider: tenant_policy_pb2.OidcProvider) -> list[dict[str, Any]]:
    return list(_parsed_inline(provider.issuer, provider.jwks_json))


async def require_public_host(url: str) -> None:
    """Raise ValueError (a failed fetch) unless every address ``url``'s host resolves to is public. The URL is a
    tenant admin's choice and auth fetches it from inside the operator's network: without this, a policy could
    make auth probe internal services (whether a sign-in fails tells whether something answered there).
    Resolved here and again by the HTTP client: a name re-pointed between the two (DNS rebinding) is not
    caught, which leaves only that success-or-failure probe, never the answer's content."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        resolved = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise ValueError(f"the JWKS host {host!r} does not resolve: {error}") from None
    for *_, address in resolved:
        ip = ipaddress.ip_address(address[0])
        if not ip.is_global or ip.is_multicast:
            raise ValueError(
                f"the JWKS host {host!r} resolves to {ip}, which is not a public address "
                "(PARAPET_AUTH_OIDC_JWKS_PRIVATE_ADDRESSES allows it)"
            )


@dataclass
class _Keys:
    keys: list[dict[str, Any]]
    fetched: float


class JwksCache:
    """Provider keys by (issuer, source); URL documents are refetched after max age or on an unknown kid."""

    def __init__(
        self,
        *,
        min_refetch_seconds: float = 5.0,
        timeout_seconds: float = 3.0,
        private_addresses: bool = False,
    ) -> None:
        self._min_refetch = min_refetch_seconds
        self._timeout = timeout_seconds
        self._private_addresses = private_addresses
        self._cache: dict[tuple[str, str], _Keys] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def _fetch(self, provider: tenant_policy_pb2.OidcProvider) -> list[dict[str, Any]]:
        # httpx's timeout bounds each read, not the whole answer: a server dripping a byte a second would hold
        # the fetch (and every sign-in of the provider, waiting on its lock) forever. Bound both time and size.
        async with asyncio.timeout(self._timeout), httpx.AsyncClient(timeout=self._timeout) as client:
            if not self._private_addresses:
                await require_public_host(provider.jwks_uri)
            async with client.stream("GET", provider.jwks_uri) as response:
                response.raise_for_status()
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise ValueError(f"the JWKS document is larger than {MAX_JWKS_BYTES} bytes")
        return jwks_keys(json.loads(body), issuer=provider.issuer)

    async def _document(self, provider: tenant_policy_pb2.OidcProvider, kid: str) -> list[dict[str, Any]]:
        if provider.WhichOneof("keys") == "jwks_json":
            return _inline_keys(provider)
        # Not per tenant: tenants that share a provider (one issuer, one URL) share one fetch and one copy of its
        # keys, while a tenant's URL of its own is its own entry and an inline document is keyed by its content.
        cache_key = (provider.issuer, provider.jwks_uri)
        lock = self._locks.setdefault(cache_key, asyncio.Lock())
        async with lock:
            cached = self._cache.get(cache_key)
            now = time.monotonic()
            known = cached is not None and any(k.get("kid") == kid for k in cached.keys)
            stale = cached is None or now - cached.fetched >= JWKS_MAX_AGE_SECONDS
            may_refetch = cached is None or now - cached.fetched >= self._min_refetch
            if stale or (not known and may_refetch):
                try:
                    self._cache[cache_key] = cached = _Keys(await self._fetch(provider), now)
                # RecursionError: JSON nested too deep, no JWKS; TimeoutError: the whole fetch took too long.
                except (httpx.HTTPError, ValueError, RecursionError, TimeoutError):
                    log.warning("fetching JWKS failed", extra={"issuer": provider.issuer}, exc_info=True)
                    if cached is None:
                        # Not the caller's fault and not a verdict on the token: retry later.
                        raise Unavailable(
                            "the identity provider's keys cannot be fetched", retry_after=5.0
                        ) from None
                    cached.fetched = now  # keep the old keys; rate-limit the retries too
            return cached.keys if cached is not None else []

    async def key(self, provider: tenant_policy_pb2.OidcProvider, token: UnverifiedToken) -> PyJWK:
        keys = await self._document(provider, token.kid)
        candidates = [k for k in keys if not token.kid or k.get("kid") == token.kid]
        if len(candidates) != 1:
            raise rejected("OIDC_SIGNATURE_INVALID", "no key of the identity provider matches the token")
        try:
            # The algorithm binds the key type: an RSA key for ES256 (or any key for HS256) fails here.
            return PyJWK(candidates[0], algorithm=token.alg)
        except jwt.PyJWTError:
            raise rejected(
                "OIDC_SIGNATURE_INVALID", "the identity provider's key does not fit the token"
            ) from None


def verify(token: UnverifiedToken, provider: tenant_policy_pb2.OidcProvider, key: PyJWK) -> dict[str, Any]:
    allowed = set(provider.allowed_algorithms or ALLOWED_ALGORITHMS) & set(ALLOWED_ALGORITHMS)
    if token.alg not in allowed:
        raise rejected("OIDC_ALGORITHM_REJECTED", "the identity provider does not allow this algorithm")
    try:
        claims: dict[str, Any] = jwt.decode(
            token.token,
            key,
            algorithms=[token.alg],
            audience=list(provider.audiences),
            issuer=provider.issuer,
            leeway=skew(provider),
            options={"require": ["iss", "aud", "exp"]},
        )
    except jwt.ExpiredSignatureError:
        raise rejected("OIDC_TOKEN_EXPIRED", "the OIDC token has expired") from None
    except jwt.ImmatureSignatureError:
        raise rejected("OIDC_TOKEN_NOT_YET_VALID", "the OIDC token is not valid yet") from None
    except jwt.InvalidAudienceError:
        raise rejected("OIDC_AUDIENCE_MISMATCH", "the OIDC token is for another audience") from None
    except jwt.InvalidIssuerError:
        raise rejected("OIDC_ISSUER_UNKNOWN", "the OIDC token's issuer is not trusted") from None
    except jwt.InvalidSignatureError:
        raise rejected("OIDC_SIGNATURE_INVALID", "the OIDC token's signature is invalid") from None
    except jwt.PyJWTError:
        raise rejected("OIDC_TOKEN_INVALID", "the OIDC token is invalid") from None
    return claims


def claim_strings(claims: dict[str, Any], name: str) -> tuple[str, ...]:
    """A list claim (or a space-separated string, as some providers send) as strings; absent = empty."""
    value = claims.get(name) if name else None
    if isinstance(value, str):
        items: list[str] = value.split()
    elif isinstance(value, list):
        items = [str(item) for item in value if isinstance(item, str | int)]
    else:
        return ()
    # A string with NUL is no role or group anyone could define, and no database could store it: dropped.
    return tuple(item for item in items if "\x00" not in item)


def withheld_claims(claims: dict[str, Any], names: tuple[str, ...]) -> tuple[str, ...]:
    """Which of ``names`` (the claims a provider's roles and groups are mapped from) the provider left out of
    the token while saying it has values for it: named in ``_claim_names`` (OIDC Core 5.6.2, distributed
    claims, which Entra ID sends instead of ``groups`` for a user in more than 200 groups, the "groups
    overage"), or Entra's implicit-flow ``hasgroups: true`` in place of ``groups``. Reading such a token as
    holding none would sign its user in with fewer groups than it has, silently."""
    pointed = claims.get("_claim_names")
    pointed = pointed if isinstance(pointed, dict) else {}
    withheld = [name for name in names if name and name not in claims and name in pointed]
    if "groups" in names and "groups" not in claims and claims.get("hasgroups") is True:
        withheld.append("groups")
    return tuple(dict.fromkeys(withheld))
