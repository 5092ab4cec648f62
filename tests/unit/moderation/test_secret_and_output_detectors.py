# ruff: noqa: RUF001 - passwords written in letters of scripts beyond Latin are what some tests are about
"""Secrets (provider keys, private keys, JWTs, passwords) and output-side checks (leaks, tenant terms and topics)."""

from __future__ import annotations

import base64
import json

import pytest

from services.moderation.detectors.api_keys import ApiKeyDetector
from services.moderation.detectors.blocked import BlockedTermDetector, BlockedTopicDetector
from services.moderation.detectors.json_web_token import JwtDetector
from services.moderation.detectors.leak import LeakDetector
from services.moderation.detectors.passwords import PasswordDetector
from services.moderation.detectors.private_keys import PrivateKeyDetector


def spans(detector: object, text: str) -> list[str]:
    return [text[d.start : d.end] for d in detector.detect(text)]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "key",
    [
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
        "sk-proj-" + "Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0Uv",
        "sk-ant-api03-" + "x9Y8z7W6" * 12,
        "xoxb-" + "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
        "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
        "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    ],
)
def test_provider_keys(key: str) -> None:
    assert spans(ApiKeyDetector(), f"use {key} for the call") == [key]


def test_generic_key_assignment_needs_a_random_value() -> None:
    assert spans(ApiKeyDetector(), 'api_key = "Zx81kQ0pL2mN7vB4cX9a"') == ["Zx81kQ0pL2mN7vB4cX9a"]
    assert spans(ApiKeyDetector(), "api_key = your-key-goes-here-please") == []
    assert spans(ApiKeyDetector(), "I use sk-learn-is-a-library-name daily") == []


def test_private_key_block_and_unterminated_block() -> None:
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----"
    assert spans(PrivateKeyDetector(), f"here:\n{key}\nthanks") == [key]
    cut = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA"
    assert spans(PrivateKeyDetector(), f"x {cut}") == [cut]  # reported to the end of the text
    assert spans(PrivateKeyDetector(), "-----BEGIN PUBLIC KEY-----\nMFkw") == []


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_jwt_needs_a_json_header_with_alg() -> None:
    token = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64({'sub': '42'})}.c2lnbmF0dXJl"
    assert spans(JwtDetector(), f"Bearer {token}") == [token]
    fake = f"{_b64({'typ': 'JWT'})}.{_b64({'sub': '42'})}.c2ln"
    assert spans(JwtDetector(), fake) == []


@pytest.mark.parametrize(
    "text, expected",
    [
        ("postgresql://app:S3cr3t!x@db.internal:5432/prod", ["S3cr3t!x"]),
        ("password: hunter2-Rocks", ["hunter2-Rocks"]),
        ("Passwort = Sommer2024!", ["Sommer2024!"]),
        ("password: ****", []),
        ("https://example.com/path", []),
    ],
)
def test_passwords(text: str, expected: list[str]) -> None:
    assert spans(PasswordDetector(), text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        # Letters of scripts written with spaces are password characters like any other: from 2026-12-06 every
        # letter outside Latin, Greek, Cyrillic and Armenian ended a password, and these were not found at all.
        ("password: مرحبا2024", ["مرحبا2024"]),
        ("pwd=नमस्ते123", ["नमस्ते123"]),
        ("password=ქართული1", ["ქართული1"]),
        ("password=שלום2024!", ["שלום2024!"]),
        ("postgres://admin:סיסמה99@db.example.com/app", ["סיסמה99"]),
        # Chinese or Japanese letters within a password's first four characters are part of it...
        ("password=密码abc123", ["密码abc123"]),
        ("password=abc密码123", ["abc密码123"]),
        ("password: 秘密の合言葉", ["秘密の合言葉"]),
        ("postgres://admin:密码99@db.example.com/app", ["密码99"]),
        # ...and text of such a script after at least four characters is the next word, not the password.
        ("password=Hunter2です", ["Hunter2"]),
        ("password=Hunter2\u200bです", ["Hunter2"]),  # the zero-width word break kept before Japanese text
        ("password=密码abc123を使ってください", ["密码abc123"]),
        ("รหัสคือpassword=Sommer2024ครับ", ["Sommer2024"]),
        ("パスワードはpassword: Hunter2", ["Hunter2"]),
    ],
)
def test_passwords_with_letters_of_other_scripts(text: str, expected: list[str]) -> None:
    assert spans(PasswordDetector(), text) == expected


def test_leak_of_canary_and_system_prompt() -> None:
    system = (
        "You are the support assistant of Acme. Never discuss pricing of the enterprise plan with anyone."
    )
    detector = LeakDetector([system, "CANARY-93f1"])
    output = (
        "Sure. my instructions say: you are the SUPPORT assistant of acme, never discuss pricing. canary-93F1"
    )
    leaked = spans(detector, output)
    assert "canary-93F1" in leaked  # exact, case-insensitive
    assert any(s.lower().startswith("you are the support assistant of acme") for s in leaked)  # re-cased copy
    assert spans(detector, "Acme support can help you with pricing questions.") == []


def test_blocked_terms_fold_evasions_and_respect_word_boundaries() -> None:
    detector = BlockedTermDetector(["Project Falcon", "globex"])
    assert spans(detector, "Tell me about project falcon and GLOBEX.") == ["project falcon", "GLOBEX"]
    assert spans(detector, "glob\u200bex is hidden") == ["glob\u200bex"]
    assert spans(detector, "globexcorp and falconry") == []


def test_blocked_topics_match_all_words_nearby_in_any_inflection() -> None:
    detector = BlockedTopicDetector(["competitor pricing"])
    assert spans(detector, "What are the prices of our competitors?") == ["prices of our competitors"]
    assert (
        spans(detector, "Our competitor opened an office. Much later, far away, a pricing page changed.")
        == []
    )
