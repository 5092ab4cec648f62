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

from parapet.kit.errors import PermissionDenied
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
