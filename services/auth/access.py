"""Who may administer what, the cached view of tenants, and the audited change transaction.

A tenant administrator (PERMISSION_ADMIN in its own tenant's policy) acts on its own tenant only; a
platform operator (PERMISSION_PLATFORM_ADMIN, which only roles of the platform tenant can hold) on any.
Refused attempts are recorded in the actor's own tenant's audit trail (never the named tenant's, which the
actor may not write to), successful changes in the changed tenant's, in the changing transaction.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import grpc
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.events.audit import admin_record
from parapet.kit.context import require_principal
from parapet.kit.errors import InvalidArgument, NotFound, ParapetError, PermissionDenied, Unauthenticated
from parapet.kit.identity import Principal
from services.auth import audit, permissions
from services.auth.cache import TenantKeyedCache
from services.auth.permissions import Permission, PermissionValue
from services.auth.store import AuthStore, KeyRecord, OidcSubject, TenantView

# A new tenant's id: the kit's form (parapet.kit.identity.TENANT_ID_PATTERN), starting with a letter. Matched
# whole (fullmatch): with `match` and `$`, "acme\n" passed, a tenant id no NATS subject or token could carry.
TENANT_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")


@dataclass(frozen=True)
class Actor:
    principal: Principal
    permissions: frozenset[PermissionValue]
    is_platform: bool


@dataclass
class Change:
    """An open admin change: its session, and facts for its audit record."""

    session: AsyncSession
    target: str
    attributes: dict[str, str] = field(default_factory=dict)


def key_refusal(record: KeyRecord, now: float) -> tuple[str, str] | None:
    """(reason, message) when the key may not act at ``now``: revoked, expired, its tenant or user disabled."""
    if record.revoke_time is not None:
        return "API_KEY_REVOKED", "the API key was revoked"
    if record.expire_time is not None and record.expire_time.timestamp() <= now:
        return "API_KEY_EXPIRED", "the API key has expired"
    if record.tenant_state != "active":
        return "TENANT_DISABLED", "the tenant is disabled"
    if record.user_state != "active":
        return "USER_DISABLED", "the key's user is disabled"
    return None


def oidc_refusal(found: OidcSubject) -> tuple[str, str] | None:
    """(reason, message) when an OIDC subject may not act, as ``AuthStore.oidc_subject`` read it: its tenant
    disabled (or gone), its user row disabled. A subject without a row acts on its provider's word."""
    if found.tenant_state != "active":
        return "TENANT_DISABLED", "the tenant is disabled"
    if found.state is not None and found.state != "active":
        return "USER_DISABLED", "the user is disabled"
    return None


def check_tenant_id(tenant_id: str, path: str = "tenant_id") -> str:
    if not TENANT_ID.fullmatch(tenant_id):
        raise InvalidArgument(
            "tenant_id is invalid",
            field_violations=[(path, "lower-case letters, digits and '-', 1-63, starting with a letter")],
        )
    return tenant_id


class Access:
    def __init__(
        self,
        store: AuthStore,
        tenants: TenantKeyedCache[TenantView],
        platform_tenant: str,
        relay_wake: asyncio.Event,
        also_invalidate: Sequence[Callable[[str], None]] = (),
    ) -> None:
        self.store = store
        self.tenants = tenants
        self.platform_tenant = platform_tenant
        self._relay_wake = relay_wake
        # This replica's other per-tenant caches (the identity cache), dropped right after a change commits.
        self._also_invalidate = also_invalidate

    async def view(self, tenant_id: str, *, at_least_version: int = 0) -> TenantView | None:
        """The tenant and its current policy, cached. ``at_least_version``: a policy version the caller has seen
        in the database; a cached view older than that (this replica has not yet heard of the change) is read
        again rather than trusted."""
        cached = self.tenants.get(tenant_id)
        if cached is not None and cached.policy.version >= at_least_version:
            return cached
        generation = self.tenants.generation(tenant_id)
        view = await self.store.tenant_view(tenant_id)
        if view is not None:
            self.tenants.put(tenant_id, tenant_id, view, generation=generation)
        return view

    async def permissions_of(
        self, principal: Principal, *, at_least_version: int = 0
    ) -> tuple[frozenset[PermissionValue], TenantView | None]:
        """What ``principal`` may do: its roles under its tenant's policy, narrowed by its scopes."""
        view = await self.view(principal.tenant_id, at_least_version=at_least_version)
        if view is None or view.state != "active":
            return frozenset(), view
        held = permissions.granted(view.policy, principal.roles)
        if principal.scopes:
            held = frozenset(p for p in held if permissions.name(p) in principal.scopes)
        return held, view

    async def with_permissions(self, principal: Principal, policy_version: int) -> Principal:
        """``principal`` carrying the names of what it may do (``permissions_of``), for the token auth issues:
        services decide from that list (parapet.kit.permissions) without the tenant policy. ``policy_version``
        is the version the token will name (read with the credential): the permissions come from it or a later
        one, never from an older view this replica still caches."""
        held, _ = await self.permissions_of(principal, at_least_version=policy_version)
        return replace(principal, permissions=tuple(sorted(permissions.name(p) for p in held)))

    async def current(self, principal: Principal) -> Principal:
        """``principal`` as its credential stands now, for the calls that change who may do what (the admin
        RPCs, IssueDelegatedToken); UNAUTHENTICATED, with Authenticate's reason, when it may no longer act.

        An internal token stays valid for up to 5 minutes whatever happens to its credential, and the other
        services accept that; auth cannot, for what it does with one outlives the token: a token of a revoked
        admin key could mint a new key for the same user, and so undo the revocation for good. So an API key
        principal is re-read by its key (revoked, expired, user or tenant disabled) and acts with its user's
        roles and the key's scopes as they are now (a demotion counts at once). An OIDC principal is re-read
        the way its sign-in read it (one query): refused once its tenant or its user row is disabled, and its
        roles are its row's now plus those its provider asserted at the recorded sign-in (the last word of
        the provider's; the token's own claims cannot be re-read), so a demotion through the row counts at
        once too. A token of neither kind (one an operator signed with the signing key) has nothing stored to
        re-read."""
        if principal.credential_type == "api_key" and principal.api_key_id:
            record = await self.store.key_record_by_id(principal.tenant_id, principal.api_key_id)
            if record is None or record.user_id != principal.subject:
                raise Unauthenticated("the token's API key does not exist", reason="API_KEY_INVALID")
            refusal = key_refusal(record, time.time())
            if refusal is not None:
                raise Unauthenticated(refusal[1], reason=refusal[0])
            return replace(principal, roles=record.roles, groups=record.groups, scopes=record.scopes)
        if principal.credential_type == "oidc_token":
            found = await self.store.oidc_subject(principal.tenant_id, principal.subject, principal.issuer)
            refusal = oidc_refusal(found)
            if refusal is not None:
                raise Unauthenticated(refusal[1], reason=refusal[0])
            roles = set(found.roles) | set(found.recorded_roles or ())
            return replace(principal, roles=tuple(sorted(roles)))
        return principal

    async def require(self, method: str, tenant_id: str, *, platform_only: bool = False) -> Actor:
        """The caller, allowed to administer ``tenant_id``; a refusal is audited and raised."""
        principal = require_principal()
        try:
            principal = await self.current(principal)
        except Unauthenticated as stale:
            await self.refused(Actor(principal, frozenset(), False), method, tenant_id, stale)
            raise
        held, _ = await self.permissions_of(principal)
        is_platform = (
            principal.tenant_id == self.platform_tenant and Permission.PERMISSION_PLATFORM_ADMIN in held
        )
        actor = Actor(principal, held, is_platform)
        error: PermissionDenied | None = None
        if principal.actor:
            # Issued to another account for work on the principal's behalf (a job's chats): until 2026-12-06
            # the delegator, which administers nothing, could name a tenant admin's key and administer its
            # tenant with the token, minting keys of its own.
            error = PermissionDenied(
                "a delegated token cannot administer; use the principal's own credential",
                reason="DELEGATED_TOKEN",
                metadata={"actor": principal.actor},
            )
        elif platform_only and not is_platform:
            error = PermissionDenied(
                "this needs platform administration",
                reason="PERMISSION_MISSING",
                metadata={"permission": "platform.admin"},
            )
        elif tenant_id != principal.tenant_id and not is_platform:
            error = PermissionDenied(
                "you cannot administer another tenant",
                reason="TENANT_MISMATCH",
                metadata={"tenant_id": tenant_id},
            )
        elif not is_platform and Permission.PERMISSION_ADMIN not in held:
            error = PermissionDenied(
                "this needs the admin permission",
                reason="PERMISSION_MISSING",
                metadata={"permission": "admin"},
            )
        if error is not None:
            await self.refused(actor, method, tenant_id, error)
            raise error
        return actor

    async def refused(
        self,
        actor: Actor,
        method: str,
        target: str,
        error: ParapetError,
        *,
        attributes: dict[str, str] | None = None,
    ) -> None:
        record = admin_record(
            actor.principal.tenant_id,
            actor.principal,
            method,
            target,
            status_code=error.code.value[0],
            error_reason=error.reason,
            attributes=attributes,
        )
        async with self.store.tenant(actor.principal.tenant_id) as session:
            await audit.write(session, record)
        self._wake()

    async def existing(self, tenant_id: str) -> TenantView:
        view = await self.view(tenant_id)
        if view is None:
            raise NotFound("no such tenant", metadata={"resource": f"tenants/{tenant_id}"})
        return view

    @asynccontextmanager
    async def change(self, actor: Actor, method: str, tenant_id: str, target: str) -> AsyncIterator[Change]:
        """A tenant transaction whose commit also writes the audit record and notifies every replica.

        A ParapetError raised inside (PRIVILEGE_ESCALATION, a version conflict...) rolls the change back
        and is then recorded as a refused attempt.
        """
        try:
            async with self.store.tenant(tenant_id) as session:
                change = Change(session, target)
                yield change
                record = admin_record(
                    tenant_id, actor.principal, method, change.target, attributes=change.attributes
                )
                await audit.write(session, record)
                await AuthStore.notify(session, tenant_id)
        except ParapetError as error:
            if error.code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.ABORTED):
                await self.refused(actor, method, target, error)
            raise
        # This replica at once, so its own next call cannot see the old state; the others on the notification.
        self.tenants.invalidate_tenant(tenant_id)
        for invalidate in self._also_invalidate:
            invalidate(tenant_id)
        self._wake()

    def _wake(self) -> None:
        self._relay_wake.set()
