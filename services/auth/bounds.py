"""Bounds of the admin RPCs' free-form fields: display names, e-mail addresses, a user's groups and roles.

Two things cap them. A user's roles and groups travel in every internal token issued for it, and the kit
refuses a token over 8 KiB (``parapet.kit.identity.MAX_TOKEN_BYTES``): at these bounds (16 roles of at most
63 characters, 32 groups of at most 100, a 255-character user id) a token stays under it, so no user can be
created that cannot then call anything. And every change's audit record carries the user's roles and groups
(and a key's scopes, which collapse to the distinct permission names): the outbox relay publishes records in
order, and one over NATS's message limit held up every later record of every tenant. gRPC's own 4 MiB
request limit was the only bound before 2026-12-07. (NUL characters are refused by the kit for every field.)
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_TEXT_LENGTH = 255  # display names and e-mail addresses (an RFC 5321 address is at most 254)
MAX_GROUPS = 32
MAX_GROUP_LENGTH = 100
MAX_ROLES = 16  # per user; a role's name is at most 63 characters (policy.ROLE_NAME)


def text_violations(value: str, path: str) -> list[tuple[str, str]]:
    return [(path, f"at most {MAX_TEXT_LENGTH} characters")] if len(value) > MAX_TEXT_LENGTH else []


def groups_violations(groups: Sequence[str], path: str) -> list[tuple[str, str]]:
    if len(set(groups)) > MAX_GROUPS:
        return [(path, f"at most {MAX_GROUPS} groups")]
    return [
        (f"{path}[{i}]", f"1-{MAX_GROUP_LENGTH} characters")
        for i, group in enumerate(groups)
        if not 1 <= len(group) <= MAX_GROUP_LENGTH
    ]


def roles_violations(roles: Sequence[str], path: str) -> list[tuple[str, str]]:
    return [(path, f"at most {MAX_ROLES} roles")] if len(set(roles)) > MAX_ROLES else []


def distinct(values: Sequence[str]) -> list[str]:
    """``values`` without repeats, in their first order (a key's scopes: ``chat`` twice is ``chat``)."""
    return list(dict.fromkeys(values))
