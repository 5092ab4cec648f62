"""Reversible masking: stable placeholders for values, and the sealed context that carries the mapping.

A value gets one placeholder per conversation (``<EMAIL_1>`` is the same address in every message and
turn), numbered per label in order of first appearance. The mapping leaves the service only inside the
masking context: AES-256-GCM under the service's key, with the tenant id as associated data and an expiry
inside, so a client can neither read it, forge it, alter it, replay it after it expires, nor use it
as another caller: the associated data is the owner (``owner``: tenant and subject of the verified
principal), not the tenant alone.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from parapet.kit.errors import InvalidArgument
from parapet.moderation.v1 import category_pb2 as C

LABELS: Mapping[int, str] = {
    C.CATEGORY_PROMPT_INJECTION: "PROMPT_INJECTION",
    C.CATEGORY_JAILBREAK: "JAILBREAK",
    C.CATEGORY_PII_EMAIL: "EMAIL",
    C.CATEGORY_PII_PHONE: "PHONE",
    C.CATEGORY_PII_CREDIT_CARD: "CREDIT_CARD",
    C.CATEGORY_PII_IBAN: "IBAN",
    C.CATEGORY_PII_US_SSN: "US_SSN",
    C.CATEGORY_PII_IP_ADDRESS: "IP_ADDRESS",
    C.CATEGORY_PII_PERSON_NAME: "PERSON",
    C.CATEGORY_PII_STREET_ADDRESS: "ADDRESS",
    C.CATEGORY_SECRET_API_KEY: "API_KEY",
    C.CATEGORY_SECRET_PRIVATE_KEY: "PRIVATE_KEY",
    C.CATEGORY_SECRET_JWT: "JWT",
    C.CATEGORY_SECRET_PASSWORD: "PASSWORD",
    C.CATEGORY_SYSTEM_PROMPT_LEAK: "SYSTEM_PROMPT",
    C.CATEGORY_BLOCKED_TOPIC: "BLOCKED_TOPIC",
    C.CATEGORY_BLOCKED_TERM: "BLOCKED_TERM",
}
PLACEHOLDER = re.compile(r"<([A-Z][A-Z_]{1,20})_(\d{1,6})>")
_LABEL_NAMES = frozenset([*LABELS.values(), "VALUE"])
MAX_PLACEHOLDER = 30  # "<" + 20-letter label + "_" + 6 digits + ">", rounded up
_VERSION = b"\x01"
_NONCE = 12
_AAD_PREFIX = b"parapet.moderation.v1.masking_context:"
MAX_CONTEXT_BYTES = 1 << 20


def owner(tenant_id: str, subject: str) -> str:
    """Whose a masking context is: the verified caller's tenant and subject. Bound to the tenant alone, a
    context that reached another user of the tenant (a log, a proxy) gave up every value through Unmask, or
    in clear through ScreenInput's masked_values (until 2026-12-06)."""
    return json.dumps([tenant_id, subject], separators=(",", ":"))


def redaction(category: int) -> str:
    return f"[REDACTED:{LABELS.get(category, 'VALUE')}]"


class MaskingVault:
    """The placeholder mapping of one conversation (in memory; sealed when it leaves the service)."""

    def __init__(self, values: Mapping[str, str] | None = None, typed: Iterable[str] = ()) -> None:
        self._values: dict[str, str] = dict(values or {})  # placeholder -> original value
        self._placeholders: dict[tuple[str, str], str] = {}  # (label, value) -> placeholder
        self._counters: dict[str, int] = {}
        # Placeholders the caller's texts hold as typed, in this turn or an earlier one: never issued.
        self._typed: set[str] = set(typed)
        for placeholder, value in self._values.items():
            match = PLACEHOLDER.fullmatch(placeholder)
            if match is None:
                continue
            label, number = match.group(1), int(match.group(2))
            self._placeholders[(label, value)] = placeholder
            self._counters[label] = max(self._counters.get(label, 0), number)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def values(self) -> Mapping[str, str]:
        return self._values

    @property
    def typed(self) -> list[str]:
        """The typed placeholders a later turn could still issue (known label, number above its counter), to
        be sealed with the mapping: forgotten, turn 2 gave "<EMAIL_2>" to a value while turn 1 held it as
        typed ("Dear <EMAIL_2>"), and restoring the answer turned the caller's template into that value."""
        kept = []
        for placeholder in self._typed:
            match = PLACEHOLDER.fullmatch(placeholder)
            if (
                match
                and match.group(1) in _LABEL_NAMES
                and int(match.group(2)) > self._counters.get(match.group(1), 0)
            ):
                kept.append(placeholder)
        return sorted(kept)

    def avoid_typed(self, text: str) -> None:
        """Never issue a placeholder ``text`` already holds that is not ours ("Fill in <EMAIL_1>" in a
        template): given to a value, restoring would turn the caller's own words into that value."""
        for match in PLACEHOLDER.finditer(text):
            if match.group() not in self._values:
                self._typed.add(match.group())

    def mask(self, category: int, value: str) -> str:
        label = LABELS.get(category, "VALUE")
        placeholder = self._placeholders.get((label, value))
        if placeholder is None:
            placeholder = self._next_placeholder(label)
            self._placeholders[(label, value)] = placeholder
            self._values[placeholder] = value
        return placeholder

    def _next_placeholder(self, label: str) -> str:
        while True:
            self._counters[label] = self._counters.get(label, 0) + 1
            placeholder = f"<{label}_{self._counters[label]}>"
            if placeholder not in self._typed:
                return placeholder

    def restore(self, text: str) -> tuple[str, int]:
        """``text`` with known placeholders replaced by their values, and how many were replaced."""
        if not self._values or "<" not in text:
            return text, 0
        restored = 0

        def replace(match: re.Match[str]) -> str:
            nonlocal restored
            value = self._values.get(match.group())
            if value is None:
                return match.group()
            restored += 1
            return value

        return PLACEHOLDER.sub(replace, text), restored


class ContextSealer:
    """Seals and opens masking contexts with AES-256-GCM; the owner (``owner()``) is bound as associated data."""

    def __init__(self, key: bytes, ttl_seconds: float) -> None:
        if len(key) != 32:
            raise ValueError("the masking key must be 32 bytes (AES-256)")
        self._aead = AESGCM(key)
        self._ttl = ttl_seconds

    def seal(self, vault: MaskingVault, owner: str) -> bytes:
        if not len(vault):
            return b""
        content: dict[str, object] = {"exp": time.time() + self._ttl, "m": vault.values}
        if typed := vault.typed:
            content["t"] = typed
        payload = json.dumps(content, separators=(",", ":"))
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, payload.encode(), _AAD_PREFIX + owner.encode())
        return _VERSION + nonce + sealed

    def open(self, blob: bytes, owner: str, field: str = "masking_context") -> MaskingVault:
        """The vault in ``blob`` (empty blob = empty vault); INVALID_ARGUMENT when forged, altered, expired
        or sealed for another owner (indistinguishable on purpose, except expiry)."""
        if not blob:
            return MaskingVault()
        if len(blob) > MAX_CONTEXT_BYTES or blob[:1] != _VERSION or len(blob) < 1 + _NONCE + 16:
            raise _invalid(field, "not a masking context issued by this service")
        try:
            payload = json.loads(
                self._aead.decrypt(blob[1 : 1 + _NONCE], blob[1 + _NONCE :], _AAD_PREFIX + owner.encode())
            )
        except (InvalidTag, ValueError):
            raise _invalid(field, "not a masking context issued by this service for this tenant") from None
        if float(payload["exp"]) < time.time():
            raise _invalid(field, "the masking context has expired", reason="MASKING_CONTEXT_EXPIRED")
        return MaskingVault(
            {str(k): str(v) for k, v in payload["m"].items()}, (str(t) for t in payload.get("t", ()))
        )


def _invalid(field: str, description: str, reason: str = "MASKING_CONTEXT_INVALID") -> InvalidArgument:
    return InvalidArgument(description, field_violations=[(field, description)], reason=reason)
