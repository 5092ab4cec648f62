"""What an OIDC sign-in's internal token carries of the roles and groups its provider asserts, and when the
sign-in is refused instead.

A provider asserts whatever its directory holds: an Entra ID or Okta user may be in hundreds of groups, of
long or non-ASCII names, and a provider's roles claim may name every app role of the directory (or its groups
mapped to roles). The kit refuses an internal token over 8 KiB (``MAX_TOKEN_BYTES``), so until 2026-12-06
such a user signed in and got a token that every service then refused (TOKEN_TOO_LARGE on every call), with
nothing saying why.

- Roles: only those the tenant's policy defines travel in the token. Any other grants nothing
  (``permissions.granted``), and every service decides from the permissions auth resolves into the token, so
  leaving it out changes no decision. (The record of what the provider asserted, for the admin rank checks,
  keeps them all.)
- Groups: no policy says which matter, and they are what retrieval grants documents by: dropping some would
  change what the user may read, without a word. So the sign-in is refused, FAILED_PRECONDITION
  ``OIDC_CLAIMS_TOO_LARGE``, when its token, signed, is over the kit's limit, or when the provider left a
  mapped claim out of the token and pointed elsewhere for it (Entra's groups overage,
  ``oidc.withheld_claims``), which read as no groups would be that silent drop. The signed size, not the bound
  of a user row (``bounds.MAX_TOKEN_IDENTITY_BYTES``, which leaves room for a delegation's claims no OIDC
  token ever carries): a sign-in is refused only when its token could not be used, never one that worked
  before. FAILED_PRECONDITION, not UNAUTHENTICATED: the credential is good, and signing in again cannot help
  until the provider sends fewer groups (a group filter on the application, the operator's to configure).
"""

from __future__ import annotations

from collections.abc import Iterable

from parapet.auth.v1 import tenant_policy_pb2
from parapet.kit.errors import FailedPrecondition
from parapet.kit.identity import MAX_TOKEN_BYTES, Principal
from services.auth import bounds

_ADVICE = (
    "ask the identity provider's administrator to send only the groups Parapet needs "
    "(a group filter on the application)"
)


def defined_roles(asserted: Iterable[str], policy: tenant_policy_pb2.TenantPolicy) -> set[str]:
    """The asserted roles the tenant's policy defines: the only ones that grant anything."""
    defined = {role.role for role in policy.roles}
    return {role for role in asserted if role in defined}


def withheld(name: str, part: str) -> FailedPrecondition:
    """The refusal of a token whose provider left its claim ``name`` (the principal's ``part``: ``roles`` or
    ``groups``) out and pointed elsewhere for it."""
    return FailedPrecondition(
        f"the identity provider left the {name!r} claim out of the token and points elsewhere for it (a user "
        f"in too many {part} for its tokens, such as Entra ID's groups overage); Parapet reads {part} from "
        f"the token only and does not sign the user in without them: {_ADVICE}",
        reason="OIDC_CLAIMS_TOO_LARGE",
        metadata={"claim": part},
    )


def too_large(size: int, principal: Principal) -> FailedPrecondition:
    """The refusal of a sign-in whose internal token, signed for ``principal``, takes ``size`` bytes, over the
    kit's limit. ``metadata``: the size, the limit, and which of the user's claims takes the most."""
    subject, roles, groups = bounds.token_bytes(principal.subject, principal.roles, principal.groups)
    taken = {
        "subject": subject,
        "roles": roles,
        "groups": groups,
        "issuer": bounds.escaped(principal.issuer),
        "jti": bounds.escaped(principal.external_token_id),
    }
    return FailedPrecondition(
        f"the token Parapet would issue for this sign-in takes {size} bytes, and services accept at most "
        f"{MAX_TOKEN_BYTES}: its {len(principal.groups)} groups take {groups} bytes of its claims, its "
        f"{len(principal.roles)} roles {roles} (JSON escapes a non-ASCII character in 6 or 12 bytes, and "
        f"base64 makes 4 of every 3); {_ADVICE}",
        reason="OIDC_CLAIMS_TOO_LARGE",
        metadata={
            "bytes": str(size),
            "max_bytes": str(MAX_TOKEN_BYTES),
            "claim": max(taken, key=lambda part: taken[part]),
        },
    )
