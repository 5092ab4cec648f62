"""Who may read a tenant's usage: the one authorization rule metering and billing share.

Stop-gap until the kit has a permission helper: the auth service defines role -> permission in the tenant
policy's role definitions and puts permission names in API key scopes ("usage.read"); this reads both from
the verified Principal and the tenant policy, never from a request field.
"""

from __future__ import annotations

from parapet.auth.v1 import permission_pb2, tenant_policy_pb2
from parapet.kit.errors import PermissionDenied
from parapet.kit.identity import Principal

USAGE_READ = "usage.read"
_GRANTING = frozenset({permission_pb2.PERMISSION_USAGE_READ, permission_pb2.PERMISSION_ADMIN})


def can_read_usage(principal: Principal, policy: tenant_policy_pb2.TenantPolicy) -> bool:
    """True when a role of the principal grants usage.read (or admin) in the policy, or a scope names it."""
    if USAGE_READ in principal.scopes:
        return True
    held = set(principal.roles)
    return any(role.role in held and _GRANTING.intersection(role.permissions) for role in policy.roles)


def require_usage_read(principal: Principal, policy: tenant_policy_pb2.TenantPolicy) -> None:
    if not can_read_usage(principal, policy):
        raise PermissionDenied(
            "reading the tenant's usage needs the usage.read permission",
            metadata={"permission": USAGE_READ},
        )
