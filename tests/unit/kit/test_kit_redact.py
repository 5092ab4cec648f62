"""Secrets in URLs never reach logs or terminals."""

from __future__ import annotations

import pytest

from parapet.kit.redact import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg://app:s3cr%40t@db.internal:5432/parapet",
            "postgresql+psycopg://app:***@db.internal:5432/parapet",
        ),
        (
            "postgresql+psycopg://postgres@127.0.0.1:5432/parapet",
            "postgresql+psycopg://postgres@127.0.0.1:5432/parapet",
        ),
        ("nats://tok3n@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        ("nats://user:pass@nats:4222", "nats://user:***@nats:4222"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ],
)
def test_credentials_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown
