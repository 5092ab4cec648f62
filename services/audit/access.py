"""Who may do what with the audit log, from the verified Principal alone.

The audit service does not resolve a tenant's role definitions (the auth service owns them). A caller holds
an audit permission when its token carries the permission name (`audit.read`, `audit.erase`,
`audit.write`, the names the auth service uses) as a scope or a role, or carries the `admin` role, which
every tenant policy defines with every tenant permission. Producers recording over the RPC are services
(credential type `service`) or hold `audit.write`.
"""

from __future__ import annotations

from parapet.kit.context import require_principal
from parapet.kit.errors import PermissionDenied
from parapet.kit.identity import Principal

AUDIT_READ = "audit.read"
AUDIT_ERASE = "audit.erase"
AUDIT_WRITE = "audit.write"
ADMIN_ROLE = "admin"


def has_audit_permission(principal: Principal, permission: str) -> bool:
    if permission == AUDIT_WRITE and principal.credential_type == "service":
        return True
    return permission in principal.scopes or permission in principal.roles or ADMIN_ROLE in principal.roles


def require_audit_permission(permission: str) -> Principal:
    """The caller, when it holds ``permission``; PERMISSION_DENIED (reason PERMISSION_MISSING) otherwise."""
    principal = require_principal()
    if not has_audit_permission(principal, permission):
        raise PermissionDenied(
            f"this needs the {permission} permission",
            reason="PERMISSION_MISSING",
            metadata={"permission": permission},
        )
    return principal
