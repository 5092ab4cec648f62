"""The shape of a Parapet API key, defined once: auth parses keys by it before any lookup, and the CLI refuses
a malformed key before any call (a PEM file or another vendor's key would otherwise reach gRPC as metadata).

``pk_<prefix>_<secret>``: ``prefix`` is 12 lower-case base32 characters (public, shown in listings and used to
find the key), ``secret`` 43 base64url characters (256 random bits). Generation and hashing stay in auth
(``services/auth/apikeys.py``).
"""

from __future__ import annotations

import re

KEY_PREFIX = "pk_"
MAX_KEY_LENGTH = 128
KEY_LOOKS_LIKE = "pk_<12 lower-case letters or digits 2-7>_<43 letters, digits, '-' or '_'>, on one line"
_FORMAT = re.compile(r"pk_([a-z2-7]{12})_([A-Za-z0-9_-]{43})")


def key_prefix(key: str) -> str | None:
    """The public prefix of ``key`` (without ``pk_``), or None when ``key`` cannot be a Parapet API key."""
    if len(key) > MAX_KEY_LENGTH:
        return None
    match = _FORMAT.fullmatch(key)
    return match.group(1) if match else None
