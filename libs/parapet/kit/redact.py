"""Keeping credentials out of logs and terminals: URLs are shown without their secrets."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"


def redact_url(url: str) -> str:
    """``url`` with any password (or a NATS token standing in the user part) replaced by ``***``.

    ``postgresql+psycopg://app:secret@db:5432/x`` → ``postgresql+psycopg://app:***@db:5432/x``;
    ``nats://token@nats:4222`` → ``nats://***@nats:4222``. URLs without credentials come back unchanged.
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, has_password, _ = userinfo.partition(":")
    if has_password:
        shown = f"{user}:{REDACTED}"
    elif parts.scheme.startswith("nats"):
        shown = REDACTED  # NATS puts a bare token where a user name would be
    else:
        shown = user
    return urlunsplit(parts._replace(netloc=f"{shown}@{hostport}"))
