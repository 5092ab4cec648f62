"""Who may do what with the audit log, from the verified Principal alone.

A caller holds an audit permission by the kit's rule (parapet.kit.permissions: the permission name, `audit.read`,
`audit.erase` or `audit.write` as auth names them, as a scope or a role, or the `admin` role). Producers
recording over the RPC are services (credential type `service`) or hold `audit.write`.
"""

from __future__ import annotations

from parapet.kit.context import require_principal
from parapet.kit.identity import Principal
from parapet.kit.permissions import has_permission, missing

AUDIT_READ = "audit.read"
AUDIT_ERASE = "audit.erase"
AUDIT_WRITE = "audit.write"


def has_audit_permission(principal: Principal, permission: str) -> bool:
    if permission == AUDIT_WRITE and principal.credential_type == "service":
        return True
    return has_permission(principal, permission)


def require_audit_permission(permission: str) -> Principal:
    """The caller, when it holds ``permission``; PERMISSION_DENIED (reason PERMISSION_MISSING) otherwise."""
    principal = require_principal()
    if not has_audit_permission(principal, permission):
        raise missing(permission)
    return principal
