"""Which RPC needs which permission, checked against the verified principal.

The internal token carries the caller's roles and scopes, not the tenant policy that maps roles to
permissions (the auth service evaluates that at the gateway). So retrieval accepts a permission when the
token names it as a scope (API keys are scoped with permission names, e.g. `documents.read`) or as a role,
and the tenant role `admin` holds every permission, as in auth's default policy.
"""

from __future__ import annotations

from parapet.kit.errors import PermissionDenied
from parapet.kit.identity import Principal

INGEST = "ingest"
DOCUMENTS_READ = "documents.read"
DOCUMENTS_DELETE = "documents.delete"
ADMIN = "admin"


def has_permission(principal: Principal, permission: str) -> bool:
    return permission in principal.scopes or permission in principal.roles or ADMIN in principal.roles


def require_permission(principal: Principal, permission: str) -> None:
    """Raises PERMISSION_DENIED (reason PERMISSION_MISSING, metadata `permission`) unless granted."""
    if not has_permission(principal, permission):
        raise PermissionDenied(
            f"this call needs the {permission!r} permission",
            reason="PERMISSION_MISSING",
            metadata={"permission": permission},
        )
