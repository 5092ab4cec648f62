"""Who may read a tenant's usage: the one authorization rule metering and billing share.

A token whose permissions auth resolved decides by them (parapet.kit.permissions). Metering holds the tenant
policy as well, so for a token without them it resolves the roles itself (auth defines role -> permission in the
policy's role definitions) and honours the scopes, never a request field.
"""

from __future__ import annotations

from parapet.auth.v1 import permission_pb2, tenant_policy_pb2
from parapet.kit.errors import PermissionDenied
from parapet.kit.identity import Principal
from parapet.kit.permissions import has_permission, missing

USAGE_READ = "usage.read"
PLATFORM_ADMIN = "platform.admin"
_GRANTING = frozenset({permission_pb2.PERMISSION_USAGE_READ, permission_pb2.PERMISSION_ADMIN})


def can_read_usage(principal: Principal, policy: tenant_policy_pb2.TenantPolicy) -> bool:
    """True when the principal's resolved permissions hold usage.read; for a token without them, when a scope
    names it (a scoped credential), or, unscoped, when a role grants usage.read (or admin) in the policy."""
    if principal.permissions is not None or principal.scopes:
        # The kit's rule: what auth resolved, or a scoped credential's scopes (it holds no more than them).
        return has_permission(principal, USAGE_READ)
    held = set(principal.roles)
    return any(role.role in held and _GRANTING.intersection(role.permissions) for role in policy.roles)


def require_usage_read(principal: Principal, policy: tenant_policy_pb2.TenantPolicy) -> None:
    if not can_read_usage(principal, policy):
        raise PermissionDenied(
            "reading the tenant's usage needs the usage.read permission",
            metadata={"permission": USAGE_READ},
        )


def is_platform_admin(
    principal: Principal, policy: tenant_policy_pb2.TenantPolicy, platform_tenant: str
) -> bool:
    """True for a principal of the platform tenant holding platform.admin: what auth resolved, else its roles
    under ``policy`` (the platform tenant's), within its scopes if it has any.

    Not ``has_permission``: for a token without resolved permissions it accepts the role named ``admin``, and
    the platform tenant's ``admin`` role holds tenant permissions only, never platform.admin (auth's rule).
    """
    if principal.tenant_id != platform_tenant:
        return False
    if principal.permissions is not None:
        return PLATFORM_ADMIN in principal.permissions
    if principal.scopes and PLATFORM_ADMIN not in principal.scopes:
        return False
    held = set(principal.roles)
    return any(
        role.role in held and permission_pb2.PERMISSION_PLATFORM_ADMIN in role.permissions
        for role in policy.roles
    )


def require_platform_admin(
    principal: Principal, policy: tenant_policy_pb2.TenantPolicy, platform_tenant: str, why: str
) -> None:
    if not is_platform_admin(principal, policy, platform_tenant):
        raise missing(PLATFORM_ADMIN, why)
