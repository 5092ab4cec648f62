"""Keeping credentials out of logs and terminals: URLs are shown without their secrets."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

REDACTED = "***"

# Query parameters that carry a credential: libpq and psycopg take `?password=` (and `sslpassword=`) in a
# connection URI as readily as in its user part, and SQLAlchemy passes the query on to them.
_SECRET_PARAMETER = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with any password (or a NATS token standing in the user part) replaced by ``***``, and the
    value of every query parameter that names a credential (``password``, ``sslpassword``, ``token``, ...).

    ``postgresql+psycopg://app:secret@db:5432/x`` → ``postgresql+psycopg://app:***@db:5432/x``;
    ``nats://token@nats:4222`` → ``nats://***@nats:4222``; ``postgresql://app@db/x?password=secret`` →
    ``postgresql://app@db/x?password=***``. URLs without credentials come back unchanged; one that does not
    parse comes back as ``***`` (what in it is a secret cannot be told).
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return REDACTED
    if parts.query:
        parts = parts._replace(query="&".join(_redact_parameter(item) for item in parts.query.split("&")))
    if "@" in parts.netloc:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        if has_password:
            shown = f"{user}:{REDACTED}"
        elif parts.scheme.startswith("nats"):
            shown = REDACTED  # NATS puts a bare token where a user name would be
        else:
            shown = user
        parts = parts._replace(netloc=f"{shown}@{hostport}")
    return urlunsplit(parts)


def _redact_parameter(item: str) -> str:
    name, has_value, _ = item.partition("=")
    if has_value and _SECRET_PARAMETER.search(unquote(name)):
        return f"{name}={REDACTED}"
    return item
