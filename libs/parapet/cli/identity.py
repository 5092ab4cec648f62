"""The internal identity key material of a local suite, provisioned once under ``home/identity/``.

The auth service signs internal tokens with the Ed25519 private key; every service verifies them with
the public keys in ``jwks.json``. Keys are made once and kept, so tokens issued before a restart of
``parapet up`` still verify after it.

Formats: PKCS#8 PEM private key (what ``PARAPET_AUTH_SIGNING_KEY_FILE`` names), the kit's RFC 8037
JWK of the public key, and as ``kid`` the key's RFC 7638 thumbprint, so the ``kid`` follows from the
key alone and the auth service recomputes it (``parapet.kit.identity.thumbprint_kid``) instead of reading it.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from parapet.embedded.private_file import write_private
from parapet.kit.identity import public_jwk as kit_public_jwk
from parapet.kit.identity import thumbprint_kid

SIGNING_KEY_NAME = "signing_key.pem"
JWKS_NAME = "jwks.json"


@dataclass(frozen=True)
class IdentityFiles:
    """Paths handed to the services: the private key (auth only) and the public JWKS (everyone)."""

    signing_key_file: Path
    jwks_file: Path
    masking_key_file: Path | None = None  # moderation's masking key (base64 of 32 bytes), when provisioned


def public_jwk(public_key: Ed25519PublicKey) -> dict[str, str]:
    """The kit's JWK of ``public_key`` with its thumbprint as ``kid``."""
    return kit_public_jwk(public_key, thumbprint_kid(public_key))


MASKING_KEY_NAME = "masking.key"


class IdentityError(Exception):
    """A key file of the home that is there but cannot be used; the message names it and the way out."""


def _ensure_masking_key(path: Path) -> None:
    # Kept across runs, so a masking context sealed before a restart can still be restored after it.
    if not path.exists():
        write_private(path, base64.b64encode(os.urandom(32)) + b"\n")


def provision(identity_dir: Path) -> IdentityFiles:
    """Create the signing key and JWKS under ``identity_dir`` unless present; return their paths."""
    identity_dir.mkdir(parents=True, exist_ok=True)
    files = IdentityFiles(
        identity_dir / SIGNING_KEY_NAME, identity_dir / JWKS_NAME, identity_dir / MASKING_KEY_NAME
    )
    assert files.masking_key_file is not None
    _ensure_masking_key(files.masking_key_file)
    if files.signing_key_file.exists():
        key = _load_signing_key(files.signing_key_file)
    else:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_private(files.signing_key_file, pem)
    _ensure_in_jwks(files.jwks_file, public_jwk(key.public_key()))
    return files


def _load_signing_key(path: Path) -> Ed25519PrivateKey:
    # A damaged or foreign key file (a half-restored backup, another tool's key) is the operator's to decide
    # about, never to overwrite: it says which file and what replacing it costs, instead of a traceback.
    replace = "move it away and `parapet up` makes a new one (tokens signed with it stop verifying)"
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        loaded = None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise IdentityError(f"{path} is not an Ed25519 private key (PEM, no password): {replace}")
    return loaded


def _ensure_in_jwks(path: Path, jwk: dict[str, str]) -> None:
    # Keys already listed stay (an operator may keep a retired key there while its tokens expire); the
    # current key is added when missing, so the JWKS can never lack the key that signs.
    keys: list[dict[str, str]] = []
    if path.exists():
        try:
            keys = list(json.loads(path.read_text()).get("keys", []))
        except (ValueError, AttributeError):  # not JSON, or JSON that is no JWKS object
            raise IdentityError(
                f"{path} is not a JWKS (JSON with a `keys` list): move it away and `parapet up` writes it anew"
            ) from None
    if any(existing.get("kid") == jwk["kid"] for existing in keys):
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keys": [*keys, jwk]}, indent=2) + "\n")
    # Atomic replace: a service re-reading the JWKS (unknown kid) never sees a half-written file.
    tmp.replace(path)
