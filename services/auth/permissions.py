"""Permissions: their names, what roles grant under a tenant policy, and the default policy of a new tenant."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeAlias

from parapet.auth.v1 import permission_pb2, tenant_policy_pb2

Permission = permission_pb2.Permission
PermissionValue: TypeAlias = permission_pb2.Permission.ValueType

# Names used in API key scopes and in PERMISSION_MISSING metadata: the enum value without its prefix,
# lower-case, `_` -> `.` for the dotted ones ("documents.read").
NAMES: dict[PermissionValue, str] = {
    Permission.PERMISSION_CHAT: "chat",
    Permission.PERMISSION_INGEST: "ingest",
    Permission.PERMISSION_DOCUMENTS_READ: "documents.read",
    Permission.PERMISSION_DOCUMENTS_DELETE: "documents.delete",
    Permission.PERMISSION_USAGE_READ: "usage.read",
    Permission.PERMISSION_AUDIT_READ: "audit.read",
    Permission.PERMISSION_AUDIT_ERASE: "audit.erase",
    Permission.PERMISSION_ADMIN: "admin",
    Permission.PERMISSION_PLATFORM_ADMIN: "platform.admin",
    Permission.PERMISSION_TOKEN_DELEGATE: "token.delegate",
}
BY_NAME: dict[str, PermissionValue] = {name: value for value, name in NAMES.items()}

# Held only by roles of the platform tenant: administering every tenant, and acting for any tenant's
# stored principals (the gateway's job workers).
PLATFORM_PERMISSIONS = frozenset({Permission.PERMISSION_PLATFORM_ADMIN, Permission.PERMISSION_TOKEN_DELEGATE})
# Everything a tenant may grant its own roles.
TENANT_PERMISSIONS = frozenset(NAMES) - PLATFORM_PERMISSIONS
ADMIN_ROLE = "admin"
PLATFORM_ADMIN_ROLE = "platform-admin"
# The platform role of service accounts that run work for other principals later (the gateway's job
# workers): token delegation and nothing else, so its key cannot administer anything.
DELEGATOR_ROLE = "token-delegator"


def name(permission: PermissionValue) -> str:
    return NAMES.get(permission, "unspecified")


def granted(policy: tenant_policy_pb2.TenantPolicy, roles: Iterable[str]) -> frozenset[PermissionValue]:
    """The permissions ``roles`` grant under ``policy``; roles the policy does not define grant nothing."""
    held = set(roles)
    permissions: set[PermissionValue] = set()
    for role in policy.roles:
        if role.role in held:
            permissions.update(role.permissions)
    permissions.discard(Permission.PERMISSION_UNSPECIFIED)
    return frozenset(permissions)


def role_permissions(policy: tenant_policy_pb2.TenantPolicy) -> dict[str, frozenset[PermissionValue]]:
    return {role.role: frozenset(role.permissions) for role in policy.roles}


def default_policy(*, platform: bool = False) -> tenant_policy_pb2.TenantPolicy:
    """Version 1 of a new tenant's policy: an ``admin`` role with every tenant permission.

    The platform tenant also gets ``platform-admin``, the only role that may hold PERMISSION_PLATFORM_ADMIN,
    and ``token-delegator`` (:func:`delegator_role`).
    """
    roles = [tenant_policy_pb2.RoleDefinition(role=ADMIN_ROLE, permissions=sorted(TENANT_PERMISSIONS))]
    if platform:
        roles.append(
            tenant_policy_pb2.RoleDefinition(
                role=PLATFORM_ADMIN_ROLE,
                permissions=sorted(TENANT_PERMISSIONS | {Permission.PERMISSION_PLATFORM_ADMIN}),
            )
        )
        roles.append(delegator_role())
    return tenant_policy_pb2.TenantPolicy(roles=roles)


def delegator_role() -> tenant_policy_pb2.RoleDefinition:
    return tenant_policy_pb2.RoleDefinition(
        role=DELEGATOR_ROLE, permissions=[Permission.PERMISSION_TOKEN_DELEGATE]
    )
