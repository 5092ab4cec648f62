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


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # libpq and psycopg take the password as a query parameter too; SQLAlchemy passes it on.
        (
            "postgresql+psycopg://app@db.internal:5432/parapet?password=s3cret&sslmode=require",
            "postgresql+psycopg://app@db.internal:5432/parapet?password=***&sslmode=require",
        ),
        (
            "postgresql://app:pw@db/x?sslpassword=k3y&application_name=a%20b",
            "postgresql://app:***@db/x?sslpassword=***&application_name=a%20b",
        ),
        ("postgresql://db/x?sslmode=verify-full", "postgresql://db/x?sslmode=verify-full"),
    ],
)
def test_credentials_in_the_query_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_url_that_does_not_parse_is_shown_as_nothing_rather_than_failing() -> None:
    # urlsplit raises on an unclosed IPv6 bracket: `parapet up` printed a traceback instead of its table.
    assert redact_url("postgresql://app:s3cret@[::1/parapet") == "***"
