"""The audit service's Ed25519 checkpoint key: loaded from a PEM file, created there when missing.

The key id is derived from the public key (``SHA-256(raw public key)``, first 16 hex digits), so a
checkpoint names the key that signed it without any registry. Without a configured file the key lives in
memory only (development): checkpoints then stop verifying after a restart, which is logged loudly.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.audit.canonical import checkpoint_message

log = logging.getLogger(__name__)


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class CheckpointSigner:
    """Signs and verifies checkpoints of every tenant's chain."""

    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def sign(self, tenant_id: str, sequence: int, head_hash: bytes, create_time: datetime) -> bytes:
        return self.private_key.sign(checkpoint_message(tenant_id, sequence, head_hash, create_time))

    def verify(
        self,
        tenant_id: str,
        sequence: int,
        head_hash: bytes,
        create_time: datetime,
        signature: bytes,
        signed_by: str,
    ) -> bool:
        if signed_by != self.key_id:
            return False  # a key this service does not hold (rotation keeps no old keys yet)
        try:
            self.public_key.verify(signature, checkpoint_message(tenant_id, sequence, head_hash, create_time))
        except InvalidSignature:
            return False
        return True


def write_key(path: Path, private_key: Ed25519PrivateKey) -> None:
    """Write ``private_key`` as unencrypted PKCS#8 PEM, readable by the owner only."""
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)


def load_signer(path: Path | None) -> CheckpointSigner:
    """The signer of ``path`` (created there when missing), or an in-memory key when ``path`` is None."""
    if path is None:
        log.warning("no audit checkpoint key file configured: using a key that dies with this process")
        return CheckpointSigner(Ed25519PrivateKey.generate())
    if not path.exists():
        try:
            write_key(path, Ed25519PrivateKey.generate())
            log.info("audit checkpoint key created", extra={"path": str(path)})
        except FileExistsError:
            pass  # another replica created it first: use theirs
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return CheckpointSigner(key)
