"""The key that signs internal tokens, and the JWKS that publishes it (plus retired keys still trusted)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from parapet.kit.identity import Jwks, KeySource, keys_from_jwks, public_jwk, read_jwks_file, thumbprint_kid
from services.auth.settings import AuthSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SigningKey:
    private_key: Ed25519PrivateKey
    kid: str

    @property
    def jwk(self) -> dict[str, str]:
        return public_jwk(self.private_key.public_key(), self.kid)

    def raw(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )


def load_signing_key(settings: AuthSettings) -> SigningKey:
    """The configured key (kid = RFC 7638 thumbprint, as `parapet up` writes it), or an ephemeral one."""
    if settings.auth_signing_key_file is None:
        log.warning("no signing key configured: using an ephemeral key (tokens die with this process)")
        key = Ed25519PrivateKey.generate()
    else:
        loaded = serialization.load_pem_private_key(settings.auth_signing_key_file.read_bytes(), None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError(f"{settings.auth_signing_key_file} is not an Ed25519 private key")
        key = loaded
    return SigningKey(key, thumbprint_kid(key.public_key()))


def load_pepper(settings: AuthSettings, signing_key: SigningKey) -> bytes:
    if settings.auth_api_key_pepper_file is not None:
        return settings.auth_api_key_pepper_file.read_bytes().strip()
    # Derived, never the key itself: the pepper and the signing key stay independent secrets to an HMAC.
    hkdf = HKDF(algorithm=SHA256(), length=32, salt=None, info=b"parapet-auth api key pepper v1")
    return hkdf.derive(signing_key.raw())


def published_jwks(settings: AuthSettings, signing_key: SigningKey) -> list[dict[str, Any]]:
    """The current key first, then every other key of the JWKS file (retired keys whose tokens still live)."""
    keys: list[dict[str, Any]] = [signing_key.jwk]
    if settings.identity_jwks_file is not None and settings.identity_jwks_file.exists():
        document: Jwks = read_jwks_file(settings.identity_jwks_file)
        valid = keys_from_jwks(document)
        keys += [k for k in document.get("keys", []) if k.get("kid") in valid and k["kid"] != signing_key.kid]
    return keys


class OwnAndFileKeys:
    """The auth service's verification keys: its own signing key, then the JWKS file (re-read on unknown kid).

    Built by the app's ``key_source`` hook from settings alone; the signing key is added when the service
    registers (so an ephemeral key is the same object that signs).
    """

    def __init__(self, fallback: KeySource | None) -> None:
        self._own: dict[str, Ed25519PublicKey] = {}
        self._fallback = fallback

    def trust(self, signing_key: SigningKey) -> None:
        self._own[signing_key.kid] = signing_key.private_key.public_key()

    async def get_key(self, kid: str) -> Ed25519PublicKey | None:
        key = self._own.get(kid)
        if key is None and self._fallback is not None:
            return await self._fallback.get_key(kid)
        return key
