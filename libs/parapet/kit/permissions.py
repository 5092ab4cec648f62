"""Whether a verified caller holds a permission, decided from its token alone.

Services other than auth do not resolve a tenant's role definitions (auth owns them and evaluates them at the
gateway). The internal token carries the caller's roles and scopes, so a permission is held when the token names
it as a scope (API keys are scoped with permission names, e.g. ``documents.read``) or as a role, or carries the
``admin`` role, which every tenant policy defines with every tenant permission.
"""

from __future__ import annotations

from parapet.kit.errors import PermissionDenied
from parapet.kit.identity import Principal

ADMIN = "admin"


def has_permission(principal: Principal, permission: str) -> bool:
    return permission in principal.scopes or permission in principal.roles or ADMIN in principal.roles


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
