"""List RPCs' paging (AIP-158): the page size a request asks for, and opaque page tokens.

A page token names where the next page starts (a position: the sort key of the last item returned, or an
offset) and is bound to the query it came from, so a token reused with other filters, by another caller or
on another resource is refused with INVALID_ARGUMENT ``PAGE_TOKEN_INVALID`` instead of silently paging
through something else. Tokens are base64url JSON: opaque to callers, not secret (they hold nothing the
caller did not send or receive).
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

from google.protobuf.message import Message

from parapet.kit.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# Tokens we issue are a few hundred bytes; anything longer is not ours, and is refused before it is decoded (a
# deeply nested JSON list would otherwise make the decoder recurse until it fails).
MAX_TOKEN_LENGTH = 1024
# The largest number position (an offset or an index): PostgreSQL's integer, so it never overflows a parameter.
MAX_NUMBER_POSITION = 2**31 - 1

Position = list[str | int]
T = TypeVar("T")


def page_size(requested: int, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    """The page size to serve: ``default`` for 0, at most ``maximum`` (a larger request is coerced, as
    AIP-158 says); INVALID_ARGUMENT for a negative one."""
    if requested < 0:
        raise InvalidArgument(
            "page_size must not be negative", field_violations=[("page_size", "must not be negative")]
        )
    return min(requested or default, maximum)


def query_key(request: Message, *scope: str) -> str:
    """A short digest of ``request``'s type and its fields but the paging ones, and of ``scope`` (tenant,
    caller, …): a token is valid only for the RPC, the query and the caller it was issued to (the type
    counts because two requests, say ListUsers and ListApiKeys of one tenant, may serialize alike)."""
    copy = type(request)()
    copy.CopyFrom(request)
    for name in ("page_size", "page_token"):
        if name in copy.DESCRIPTOR.fields_by_name:
            copy.ClearField(name)
    digest = hashlib.sha256(copy.DESCRIPTOR.full_name.encode())
    digest.update(b"\0" + copy.SerializeToString(deterministic=True))
    for part in scope:
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:16]


def encode(position: Sequence[str | int], query: str) -> str:
    """The token of the page that starts after ``position``, for ``query`` (a ``query_key`` or a name)."""
    return base64.urlsafe_b64encode(json.dumps({"p": list(position), "q": query}).encode()).decode()


def decode(token: str, query: str) -> Position | None:
    """The position ``token`` names, None for an empty token (the first page); PAGE_TOKEN_INVALID for a token
    that is not ours or was issued for another query."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_LENGTH:
        raise invalid_token()
    try:
        raw = json.loads(base64.urlsafe_b64decode(token.encode()))
        position, bound = raw["p"], raw["q"]
        valid = (
            bound == query
            and isinstance(position, list)
            and bool(position)
            and all(_storable(part) if isinstance(part, str) else _number(part) for part in position)
        )
    except (ValueError, KeyError, TypeError, RecursionError):
        valid = False
    if not valid:
        raise invalid_token()
    return list(position)


def _number(part: object) -> bool:
    return isinstance(part, int) and not isinstance(part, bool)


def _storable(text: str) -> bool:
    """Whether a text position can be a query parameter at all. Tokens are not secret, so a caller can write one
    with any position: PostgreSQL takes no NUL in text, and a lone surrogate cannot be encoded (the
    UnicodeEncodeError is a ValueError, refused by ``decode``). Such a position failed retrieval's listing
    INTERNAL until 2026-12-06. No value we store holds either, so no token we issued is refused."""
    text.encode()
    return "\x00" not in text


def decode_number(token: str, query: str) -> int | None:
    """The position of a token whose position is one number (an offset, an index), None for an empty token;
    PAGE_TOKEN_INVALID for anything else."""
    position = decode(token, query)
    if position is None:
        return None
    match position:
        case [int(number)] if 0 <= number <= MAX_NUMBER_POSITION:
            return number
    raise invalid_token()


def decode_text(token: str, query: str) -> str | None:
    """The position of a token whose position is one string (the last name or id of a page sorted by it),
    None for an empty token; PAGE_TOKEN_INVALID for anything else."""
    match decode(token, query):
        case None:
            return None
        case [str(text)]:
            return text
    raise invalid_token()


def decode_moment_and_id(token: str, query: str) -> tuple[datetime, uuid.UUID] | None:
    """The position of a token of a page sorted by (time, UUID), as ``encode([t.isoformat(), str(id)], …)``
    wrote it; None for an empty token; PAGE_TOKEN_INVALID for anything else, before it can become a query
    parameter the database refuses."""
    match decode(token, query):
        case None:
            return None
        case [str(moment), str(identifier)]:
            return _moment(moment), _checked(uuid.UUID, identifier)
    raise invalid_token()


def decode_moment_and_number(token: str, query: str) -> tuple[datetime, int] | None:
    """The position of a token of a page sorted by (time, a number such as a sequence), as
    ``encode([t.isoformat(), n], …)`` wrote it; None for an empty token; PAGE_TOKEN_INVALID otherwise."""
    match decode(token, query):
        case None:
            return None
        case [str(moment), int(number)] if 0 <= number < 2**63:
            return _moment(moment), number
    raise invalid_token()


def _moment(text: str) -> datetime:
    return _checked(datetime.fromisoformat, text)


def _checked(parse: Callable[[str], T], text: str) -> T:
    try:
        return parse(text)
    except ValueError:
        raise invalid_token() from None


def invalid_token() -> InvalidArgument:
    """The error for a page token that is not ours or not of this query (also for a position of the wrong
    shape, which a caller-side decoder finds)."""
    return InvalidArgument(
        "page_token is not a token of this query",
        reason="PAGE_TOKEN_INVALID",
        field_violations=[("page_token", "not from a previous call with the same request and caller")],
    )
