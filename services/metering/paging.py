"""Opaque page tokens: an offset bound to the query it came from (shared by GetUsage and ListRollups)."""

from __future__ import annotations

import base64
import hashlib
import json

from google.protobuf.message import Message

from parapet.kit.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative", field_violations=[("page_size", "negative")])
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def fingerprint(request: Message, tenant_id: str, subject: str) -> str:
    """Hash of the request without its paging fields: a token is valid only for the same query and caller."""
    copy = type(request)()
    copy.CopyFrom(request)
    for name in ("page_size", "page_token"):
        copy.ClearField(name)
    digest = hashlib.sha256(copy.SerializeToString(deterministic=True))
    digest.update(f"\0{tenant_id}\0{subject}".encode())
    return digest.hexdigest()[:16]


def encode(offset: int, query: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset, "q": query}).encode()).decode()


def decode(token: str, query: str) -> int:
    """The offset of ``token`` (0 for an empty one); PAGE_TOKEN_INVALID for a token of another query."""
    if not token:
        return 0
    try:
        raw = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset, bound = int(raw["o"]), str(raw["q"])
    except (ValueError, KeyError, TypeError) as error:
        raise _invalid() from error
    if bound != query or offset < 0:
        raise _invalid()
    return offset


def _invalid() -> InvalidArgument:
    return InvalidArgument(
        "page_token is not from this query",
        reason="PAGE_TOKEN_INVALID",
        field_violations=[("page_token", "not a token of this query")],
    )
