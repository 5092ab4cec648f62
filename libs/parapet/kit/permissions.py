"""Whether a verified caller holds a permission, decided from its token alone.

Services other than auth do not resolve a tenant's role definitions: auth owns them. When it issues a token it
resolves the caller's roles under the tenant policy, narrows them by the credential's scopes, and writes the
permission names it found into the token (``Principal.permissions``, claim ``perm``); that list is the answer.
Before it did, services looked for a role *named* like the permission, so a custom role the policy granted a
permission (a ``member`` with ``documents.read``) was refused everywhere but at the gateway.

A token without the list (one an older auth issued during an upgrade, or one a test or tool signed) falls back to
the names it carries: the permission as a scope or a role, or the ``admin`` role (which every tenant policy defines
with every tenant permission), never beyond its scopes when it has any.
"""

from __future__ import annotations

from google.protobuf.message import Message

from parapet.kit.errors import InvalidArgument, PermissionDenied
from parapet.kit.identity import Principal

ADMIN = "admin"


def has_permission(principal: Principal, permission: str) -> bool:
    if principal.permissions is not None:
        return permission in principal.permissions
    if principal.scopes:
        return permission in principal.scopes
    return permission in principal.roles or ADMIN in principal.roles


def missing(permission: str, why: str = "") -> PermissionDenied:
    """PERMISSION_DENIED, reason PERMISSION_MISSING, metadata ``permission``; ``why`` names what needed it
    (default: this call)."""
    return PermissionDenied(
        f"{why or 'this call'} needs the {permission!r} permission",
        reason="PERMISSION_MISSING",
        metadata={"permission": permission},
    )


def require_permission(principal: Principal, permission: str, why: str = "") -> None:
    """Raises ``missing(permission, why)`` unless ``principal`` holds ``permission``."""
    if not has_permission(principal, permission):
        raise missing(permission, why)


def erasure_target(principal: Principal, request: Message, *, everything: str, what: str) -> str | None:
    """Whose ``what`` an erasure request deletes: a request with ``oneof scope { string user_id; bool
    <everything>; }`` names one user (the caller's own need no permission, another's ``admin``) or, with
    ``everything`` true, the whole tenant's (``admin``; returns None). Anything else is INVALID_ARGUMENT."""
    scope = request.WhichOneof("scope")
    user_id = str(getattr(request, "user_id", ""))
    if scope == "user_id" and user_id:
        if user_id != principal.subject:
            require_permission(principal, ADMIN, f"deleting another user's {what}")
        return user_id
    if scope == everything and getattr(request, everything):
        require_permission(principal, ADMIN, f"deleting every one of the tenant's {what}")
        return None
    raise InvalidArgument(
        f"set exactly one scope: a non-empty user_id, or {everything} = true",
        field_violations=[("scope", f"user_id or {everything} required")],
    )
