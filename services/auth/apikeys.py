"""API key material: generation, parsing and the keyed hash that is all the database ever stores.

Format: ``pk_<prefix>_<secret>``: ``prefix`` is 12 lower-case base32 characters (60 random bits, public,
shown in listings and used to find the key), ``secret`` is 43 base64url characters (256 random bits).
Because the secret is high-entropy random, a fast keyed hash (HMAC-SHA256 with a server-side pepper) is
enough: nothing can be guessed offline, and a slow password hash would only make Authenticate slow. The
pepper means a stolen table alone does not even allow checking a leaked key against it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from parapet.kit.api_key_format import KEY_PREFIX, MAX_KEY_LENGTH, key_prefix

__all__ = ["KEY_PREFIX", "MAX_KEY_LENGTH", "KeyHasher", "ParsedKey", "generate", "parse", "token_digest"]


@dataclass(frozen=True)
class ParsedKey:
    prefix: str  # the public part, without "pk_"
    full: str  # the whole key as presented


def generate() -> tuple[str, str]:
    """A new key: (public prefix, full key). The full key is shown once and never stored."""
    prefix = base64.b32encode(secrets.token_bytes(10)).decode().lower()[:12]
    secret = secrets.token_urlsafe(32)
    return prefix, f"{KEY_PREFIX}{prefix}_{secret}"


def parse(key: str) -> ParsedKey | None:
    """The key's parts, or None when it cannot be a Parapet API key (checked before any lookup)."""
    prefix = key_prefix(key)
    return None if prefix is None else ParsedKey(prefix=prefix, full=key)


class KeyHasher:
    """HMAC-SHA256 of whole keys under the deployment's pepper."""

    def __init__(self, pepper: bytes) -> None:
        if len(pepper) < 32:
            raise ValueError("the API key pepper must be at least 32 bytes")
        self._pepper = pepper

    def hash(self, key: str) -> bytes:
        return hmac.digest(self._pepper, key.encode(), "sha256")  # one call into OpenSSL, no HMAC object

    @staticmethod
    def matches(stored: bytes, presented: bytes) -> bool:
        # Constant time: the comparison must not tell an attacker how many leading bytes were right.
        return hmac.compare_digest(stored, presented)


def token_digest(token: str) -> bytes:
    """Cache key of an OIDC token: its SHA-256 (the token itself is not kept in memory twice)."""
    return hashlib.sha256(token.encode()).digest()
