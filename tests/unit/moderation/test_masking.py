"""Placeholders are stable and reversible; the sealed context cannot be read, forged, moved or used late."""

from __future__ import annotations

import os
import time

import pytest

from parapet.kit.errors import InvalidArgument
from parapet.moderation.v1 import category_pb2 as C
from services.moderation.masking import ContextSealer, MaskingVault


def test_same_value_same_placeholder_numbered_per_label() -> None:
    vault = MaskingVault()
    assert vault.mask(C.CATEGORY_PII_EMAIL, "a@x.io") == "<EMAIL_1>"
    assert vault.mask(C.CATEGORY_PII_EMAIL, "b@x.io") == "<EMAIL_2>"
    assert vault.mask(C.CATEGORY_PII_PHONE, "+1 415 555 0134") == "<PHONE_1>"
    assert vault.mask(C.CATEGORY_PII_EMAIL, "a@x.io") == "<EMAIL_1>"


def test_restore_known_placeholders_only() -> None:
    vault = MaskingVault()
    vault.mask(C.CATEGORY_PII_EMAIL, "a@x.io")
    text, restored = vault.restore("write to <EMAIL_1>, not <EMAIL_9> or <email_1>")
    assert (text, restored) == ("write to a@x.io, not <EMAIL_9> or <email_1>", 1)


def test_sealed_context_round_trips_and_continues_numbering() -> None:
    sealer = ContextSealer(os.urandom(32), ttl_seconds=60)
    vault = MaskingVault()
    vault.mask(C.CATEGORY_PII_EMAIL, "a@x.io")
    blob = sealer.seal(vault, "tenant-a")
    assert b"a@x.io" not in blob  # encrypted, not just encoded
    reopened = sealer.open(blob, "tenant-a")
    assert reopened.mask(C.CATEGORY_PII_EMAIL, "a@x.io") == "<EMAIL_1>"
    assert reopened.mask(C.CATEGORY_PII_EMAIL, "c@x.io") == "<EMAIL_2>"
    assert sealer.seal(MaskingVault(), "tenant-a") == b""
    assert len(sealer.open(b"", "tenant-a")) == 0


def test_forged_altered_foreign_and_expired_contexts_are_refused() -> None:
    key = os.urandom(32)
    sealer = ContextSealer(key, ttl_seconds=60)
    vault = MaskingVault()
    vault.mask(C.CATEGORY_PII_IBAN, "DE89370400440532013000")
    blob = sealer.seal(vault, "tenant-a")
    altered = blob[:-1] + bytes([blob[-1] ^ 1])
    for bad, tenant in ((altered, "tenant-a"), (blob, "tenant-b"), (b"\x01" + os.urandom(40), "tenant-a"),
                        (ContextSealer(os.urandom(32), 60).seal(vault, "tenant-a"), "tenant-a")):  # fmt: skip
        with pytest.raises(InvalidArgument) as refused:
            sealer.open(bad, tenant)
        assert refused.value.reason == "MASKING_CONTEXT_INVALID"
    expired = ContextSealer(key, ttl_seconds=0.001).seal(vault, "tenant-a")
    time.sleep(0.01)
    with pytest.raises(InvalidArgument) as late:
        sealer.open(expired, "tenant-a")
    assert late.value.reason == "MASKING_CONTEXT_EXPIRED"


def test_key_must_be_256_bits() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        ContextSealer(b"short", 60)
