"""The masking key setting: base64 of exactly 32 bytes, or a random per-process key when unset."""

from __future__ import annotations

import base64

import pytest

from services.moderation.app import masking_key
from services.moderation.settings import ModerationSettings


def test_configured_key_is_decoded() -> None:
    key = bytes(range(32))
    assert masking_key(ModerationSettings(masking_key=base64.b64encode(key).decode())) == key


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"short").decode()])
def test_bad_key_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        masking_key(ModerationSettings(masking_key=bad))


def test_unset_key_is_random_per_process() -> None:
    first, second = masking_key(ModerationSettings()), masking_key(ModerationSettings())
    assert len(first) == 32 and first != second
