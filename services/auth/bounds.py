"""Bounds of the admin RPCs' free-form fields: display names, e-mail addresses, a user's groups and roles.

Two things cap them. A user's id, roles and groups travel in every internal token issued for it, and the kit
refuses a token over 8 KiB (``parapet.kit.identity.MAX_TOKEN_BYTES``), so no user may be stored that cannot
then call anything. What counts there is bytes of the token's JSON, not characters: PyJWT escapes every
non-ASCII character (6 bytes, 12 beyond the Basic Multilingual Plane) and ``"`` and ``\\`` (2 bytes), and
the whole is base64url'd. Until 2026-12-06 only characters were bounded, and a user of 32 groups of 100 CJK
characters, within them, got a 28 KB token that every service refused. So the three together are bounded in
those bytes (``MAX_TOKEN_IDENTITY_BYTES``), beside the bounds in characters. (An OIDC sign-in's token is
bounded by its signed size instead, ``oidc_claims``: what its provider asserts is known only then.) And every
change's audit record carries the user's roles and groups (and a key's scopes, which collapse to the distinct
permission names): the outbox relay publishes records in order, and one over NATS's message limit held up
every later record of every tenant. gRPC's own 4 MiB request limit was the only bound before 2026-12-06. (NUL
characters are refused by the kit for every field.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

MAX_TEXT_LENGTH = 255  # display names and e-mail addresses (an RFC 5321 address is at most 254)
MAX_GROUPS = 32
MAX_GROUP_LENGTH = 100
MAX_ROLES = 16  # per user; a role's name is at most 63 characters (policy.ROLE_NAME)
# A user's id, roles and groups in a token's claims, escaped (``token_bytes``). The rest of a token at its
# largest (tenant id 63 characters, issuer and audience 64 each, every permission name as scopes and as
# permissions, an API key id, a delegation's ``act`` naming a delegator of up to 64 ASCII characters) takes
# about 840 bytes of JSON, header and signature about 190 characters: at 5,000 bytes here a token stays under
# 8 KiB with room to spare (``test_a_token_at_the_identity_bound_fits_the_kit_s_limit``).
MAX_TOKEN_IDENTITY_BYTES = 5000


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


def escaped(value: str | list[str]) -> int:
    """Bytes of ``value`` in a token's claims, as PyJWT writes them: compact separators, ensure_ascii."""
    return len(json.dumps(value, separators=(",", ":")))


def token_bytes(user_id: str, roles: Iterable[str], groups: Iterable[str]) -> tuple[int, int, int]:
    """The bytes a user's id, roles and groups take in a token's claims, the lists as a token carries them
    (distinct, sorted); their sum is what ``MAX_TOKEN_IDENTITY_BYTES`` bounds."""
    return escaped(user_id), escaped(sorted(set(roles))), escaped(sorted(set(groups)))


def token_violations(
    user_id: str, roles: Iterable[str], groups: Iterable[str], fields: Sequence[str]
) -> list[tuple[str, str]]:
    """One violation when the user, as stored (roles and groups distinct and sorted), would take more than
    ``MAX_TOKEN_IDENTITY_BYTES`` of a token's claims: on whichever of ``fields`` (paths among
    ``user.user_id``, ``user.roles``, ``user.groups``: those the request sets) takes the most."""
    taken = dict(
        zip(("user.user_id", "user.roles", "user.groups"), token_bytes(user_id, roles, groups), strict=True)
    )
    total = sum(taken.values())
    if total <= MAX_TOKEN_IDENTITY_BYTES or not fields:
        return []
    largest = max(fields, key=lambda path: taken[path])
    return [
        (
            largest,
            f"the user's id, roles and groups take {total} bytes in every token issued for it, at most "
            f"{MAX_TOKEN_IDENTITY_BYTES} (escaped as JSON: a non-ASCII character takes 6 or 12 bytes, "
            'a " or \\ 2)',
        )
    ]
