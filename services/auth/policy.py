"""Validation of a tenant policy as a whole, and the escalation checks on what an edit grants or takes away."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlparse

from parapet.auth.v1 import tenant_policy_pb2
from parapet.events.audit import MAX_BODY_RETENTION_DAYS
from parapet.kit import wellknown
from parapet.kit.errors import InvalidArgument, PermissionDenied
from services.auth import oidc
from services.auth.permissions import (
    NAMES,
    PLATFORM_ADMIN_ROLE,
    PLATFORM_PERMISSIONS,
    Permission,
    PermissionValue,
    name,
    role_permissions,
)

ROLE_NAME = re.compile(r"^[a-z][a-z0-9._-]{0,62}$")
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}
P = tenant_policy_pb2


def _provider_violations(index: int, provider: P.OidcProvider) -> Iterable[tuple[str, str]]:
    path = f"policy.identity_providers[{index}]"
    if not provider.issuer:
        yield f"{path}.issuer", "required"
    if not provider.audiences:
        yield f"{path}.audiences", "at least one audience is required"
    source = provider.WhichOneof("keys")
    if source is None:
        yield f"{path}.keys", "set jwks_uri or jwks_json"
    elif source == "jwks_uri":
        url = urlparse(provider.jwks_uri)
        # Plain HTTP only to the loopback interface (a local provider or a test), never across a network.
        if (
            not (url.scheme == "https" or (url.scheme == "http" and url.hostname in _LOOPBACK))
            or not url.netloc
        ):
            yield f"{path}.jwks_uri", "must be an https URL"
    else:
        # Entries that are no key we can use are skipped at sign-in (RFC 7517: ignore what one does not
        # understand), so only a document with no usable key at all is refused: refusing a stored policy's odd
        # entry would fail every later edit on a field its author did not touch.
        try:
            usable, _ = oidc.read_jwks(json.loads(provider.jwks_json))
        except (ValueError, RecursionError):
            usable = []
        if not usable:
            yield f"{path}.jwks_json", "must be a JWKS document with at least one usable key"
    for j, alg in enumerate(provider.allowed_algorithms):
        if alg not in oidc.ALLOWED_ALGORITHMS:
            yield f"{path}.allowed_algorithms[{j}]", f"must be one of {', '.join(oidc.ALLOWED_ALGORITHMS)}"
    if provider.HasField("max_clock_skew"):
        skew = wellknown.as_timedelta(provider.max_clock_skew)
        if skew is None or not 0 <= skew.total_seconds() <= oidc.MAX_SKEW_SECONDS:
            yield f"{path}.max_clock_skew", "must be between 0 and 5 minutes"


def violations(policy: P.TenantPolicy) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    seen_roles: set[str] = set()
    for i, role in enumerate(policy.roles):
        if not ROLE_NAME.match(role.role):
            found.append((f"policy.roles[{i}].role", "lower-case letters, digits, '.', '_', '-'; 1-63"))
        elif role.role in seen_roles:
            found.append((f"policy.roles[{i}].role", "duplicate role"))
        seen_roles.add(role.role)
        for j, permission in enumerate(role.permissions):
            if permission not in NAMES:
                found.append((f"policy.roles[{i}].permissions[{j}]", "unknown permission"))
    if policy.models.max_tokens_per_request < 0:
        found.append(("policy.models.max_tokens_per_request", "must not be negative"))
    categories: set[int] = set()
    for i, rule in enumerate(policy.moderation.rules):
        if rule.category in categories:
            found.append((f"policy.moderation.rules[{i}].category", "at most one rule per category"))
        categories.add(rule.category)
    if not 0 <= policy.retention.body_retention_days <= MAX_BODY_RETENTION_DAYS:
        found.append(("policy.retention.body_retention_days", f"must be in [0, {MAX_BODY_RETENTION_DAYS}]"))
    budget_ids: set[str] = set()
    for i, budget in enumerate(policy.budgets):
        path = f"policy.budgets[{i}]"
        if not budget.budget_id or budget.budget_id in budget_ids:
            found.append((f"{path}.budget_id", "required and unique"))
        budget_ids.add(budget.budget_id)
        if budget.scope == P.BUDGET_SCOPE_UNSPECIFIED:
            found.append((f"{path}.scope", "required"))
        if budget.window == P.BUDGET_WINDOW_UNSPECIFIED:
            found.append((f"{path}.window", "required"))
        limit = budget.WhichOneof("limit")
        if limit is None or (limit == "token_limit" and budget.token_limit <= 0):
            found.append((f"{path}.limit", "a positive token_limit or cost_limit is required"))
        elif limit == "cost_limit" and (
            budget.cost_limit.amount_micros <= 0 or not budget.cost_limit.currency_code
        ):
            found.append((f"{path}.cost_limit", "a positive amount with a currency code is required"))
        if not 0 <= budget.soft_limit_percent <= 100:
            found.append((f"{path}.soft_limit_percent", "must be 0-100"))
    for i, limit_rule in enumerate(policy.rate_limits):
        if limit_rule.scope == P.RATE_LIMIT_SCOPE_UNSPECIFIED:
            found.append((f"policy.rate_limits[{i}].scope", "required"))
        if limit_rule.requests_per_minute < 0 or limit_rule.tokens_per_minute < 0:
            found.append((f"policy.rate_limits[{i}]", "limits must not be negative"))
    issuers: set[str] = set()
    for i, provider in enumerate(policy.identity_providers):
        found.extend(_provider_violations(i, provider))
        if provider.issuer in issuers:
            found.append((f"policy.identity_providers[{i}].issuer", "duplicate issuer"))
        issuers.add(provider.issuer)
    return found


def validate(policy: P.TenantPolicy) -> None:
    found = violations(policy)
    if found:
        raise InvalidArgument("the tenant policy is invalid", reason="POLICY_INVALID", field_violations=found)


def check_platform_policy(policy: P.TenantPolicy) -> None:
    """The platform tenant's policy keeps role ``platform-admin`` granting ``platform.admin``: the role of every
    operator account (``parapet bootstrap operator``, ``--replace`` included). Stored without it, no credential
    could administer the platform again (create, list, disable a tenant), short of editing the database: until
    2026-12-06 one edit of the platform policy could do that, the operator's own included."""
    place = next((i for i, role in enumerate(policy.roles) if role.role == PLATFORM_ADMIN_ROLE), None)
    if place is None:
        violation = ("policy.roles", f"the platform tenant must keep role {PLATFORM_ADMIN_ROLE!r}")
    elif Permission.PERMISSION_PLATFORM_ADMIN not in policy.roles[place].permissions:
        violation = (
            f"policy.roles[{place}].permissions",
            f"role {PLATFORM_ADMIN_ROLE!r} of the platform tenant must keep 'platform.admin'",
        )
    else:
        return
    raise InvalidArgument(
        "the platform policy would leave no platform administration",
        reason="POLICY_INVALID",
        field_violations=[violation],
    )


def check_grants(
    old: P.TenantPolicy,
    new: P.TenantPolicy,
    held: frozenset[PermissionValue],
    *,
    platform_tenant: bool,
    is_platform: bool,
) -> None:
    """Refuse an edit its author could use to rise above, or act against, those who hold more.

    Platform rights never go to a customer tenant. Otherwise (platform operators excepted) every role the
    edit adds, removes or redefines needs its author to hold all it granted before and all it grants after:
    granting beyond one's own is an escalation, and cutting down (or deleting) a role one does not fully
    hold demotes its holders, who hold more than the author. An identity provider can assert any role (its
    role claim) or any user (its subject claim), so changing the providers needs every permission of every
    role.
    """
    before, after = role_permissions(old), role_permissions(new)
    for role, permissions in after.items():
        platform_only = permissions & PLATFORM_PERMISSIONS
        if platform_only and not platform_tenant:
            raise escalation(name(min(platform_only)), role)
    if is_platform:
        return
    everything = {
        role: before.get(role, frozenset()) | after.get(role, frozenset())
        for role in before.keys() | after.keys()
    }
    changed = {role: grants for role, grants in everything.items() if before.get(role) != after.get(role)}
    check_held(changed, held, doing="changing a role")
    if _providers(old) != _providers(new):
        check_held(everything, held, doing="changing identity providers (they can assert any role)")


def _providers(policy: P.TenantPolicy) -> dict[str, P.OidcProvider]:
    """The identity providers by issuer (unique in a valid policy), so that their order is no change."""
    return {provider.issuer: provider for provider in policy.identity_providers}


def check_held(
    roles: Mapping[str, frozenset[PermissionValue]], held: frozenset[PermissionValue], *, doing: str
) -> None:
    """Refuse ``doing`` unless ``held`` covers every permission of every role in ``roles``."""
    for role in sorted(roles):
        missing = roles[role] - held
        if missing:
            raise escalation(name(min(missing)), role, doing=doing)


def escalation(permission: str, role: str, *, doing: str = "granting a role") -> PermissionDenied:
    return PermissionDenied(
        f"{doing} needs {permission!r} (role {role!r}) yourself",
        reason="PRIVILEGE_ESCALATION",
        metadata={"permission": permission, "role": role},
    )
