"""Who may do what with the audit log, from the verified Principal alone.

A caller holds `audit.read` or `audit.erase` by the kit's rule (parapet.kit.permissions: what auth resolved into
the token, or for a token without that, the name as a scope or role, or the `admin` role). Producers recording
over the RPC are services (credential type `service`) or hold `admin` in the tenant: `audit.write` is no
permission a tenant policy can grant, so auth never resolves it into a token, and `admin` is what stands for it
(a token without resolved permissions may still name it as a scope or role).
"""

from __future__ import annotations

from parapet.kit.context import require_principal
from parapet.kit.identity import Principal
from parapet.kit.permissions import ADMIN, has_permission, missing

AUDIT_READ = "audit.read"
AUDIT_ERASE = "audit.erase"
AUDIT_WRITE = "audit.write"


def has_audit_permission(principal: Principal, permission: str) -> bool:
    if permission == AUDIT_WRITE and (
        principal.credential_type == "service" or has_permission(principal, ADMIN)
    ):
        return True
    return has_permission(principal, permission)


def require_audit_permission(permission: str) -> Principal:
    """The caller, when it holds ``permission``; PERMISSION_DENIED (reason PERMISSION_MISSING) otherwise."""
    principal = require_principal()
    if not has_audit_permission(principal, permission):
        raise missing(permission)
    return principal
