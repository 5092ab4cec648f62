"""The TenantAdminService servicer: tenants, users, API keys and tenant policies, every change audited."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TypeAlias

import grpc.aio
from google.protobuf.message import Message
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.auth.v1 import tenant_admin_service_pb2 as pb
from parapet.auth.v1 import tenant_admin_service_pb2_grpc, user_pb2
from parapet.kit import paging, wellknown
from parapet.kit.context import require_principal
from parapet.kit.errors import Aborted, AlreadyExists, InvalidArgument, NotFound
from services.auth import apikeys, bounds, permissions, policy, records
from services.auth.access import Access, Actor, check_tenant_id
from services.auth.apikeys import KeyHasher
from services.auth.store import AuthStore

SERVICE = "/parapet.auth.v1.TenantAdminService/"
Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]
USER_FIELDS = frozenset({"display_name", "email", "roles", "groups", "state"})
PAGE_SIZE = 50  # every listing's page size when the request says 0 (the contract's default)
MAX_USER_ID_LENGTH = 255  # CreateUser's bound, so no user has a longer id
USER_ID_RULE = f"1-{MAX_USER_ID_LENGTH} characters"


def _user_id_violations(user_id: str, path: str) -> list[tuple[str, str]]:
    """A user id no user can have. Refused before any lookup: a NOT_FOUND would name it back (``users/<id>``
    in its ErrorInfo), and past gRPC's metadata limit the caller gets RESOURCE_EXHAUSTED with no details."""
    return [] if 1 <= len(user_id) <= MAX_USER_ID_LENGTH else [(path, USER_ID_RULE)]


def _check_user_id(user_id: str, path: str) -> None:
    violations = _user_id_violations(user_id, path)
    if violations:
        raise InvalidArgument(f"{path} is invalid", field_violations=violations)


def _check_user(spec: user_pb2.User, fields: set[str]) -> None:
    """A user's id and, of ``fields``, those with bounds (``bounds``): all of them or one INVALID_ARGUMENT."""
    problems = _user_id_violations(spec.user_id, "user.user_id")
    for name in sorted({"display_name", "email"} & fields):
        problems += bounds.text_violations(getattr(spec, name), f"user.{name}")
    if "roles" in fields:
        problems += bounds.roles_violations(spec.roles, "user.roles")
    if "groups" in fields:
        problems += bounds.groups_violations(spec.groups, "user.groups")
    if "state" in fields and spec.state not in (user_pb2.USER_STATE_ACTIVE, user_pb2.USER_STATE_DISABLED):
        # An update naming the state must say which: left unspecified, it enabled a disabled user until
        # 2026-12-06. (CreateUser's unspecified state is its default, active.)
        problems.append(("user.state", "USER_STATE_ACTIVE or USER_STATE_DISABLED"))
    if problems:
        raise InvalidArgument("the user is invalid", field_violations=problems)


def _check_fits_a_token(user_id: str, roles: Iterable[str], groups: Iterable[str], fields: set[str]) -> None:
    """The user as it will be stored, bounded in what its tokens carry (``bounds.token_violations``), the
    violation on the largest of ``fields`` (``user_id``, ``roles``, ``groups``) the request sets."""
    paths = [f"user.{name}" for name in ("user_id", "roles", "groups") if name in fields]
    problems = bounds.token_violations(user_id, roles, groups, paths)
    if problems:
        raise InvalidArgument("the user would not fit in a token", field_violations=problems)


def _now() -> datetime:
    return datetime.now(UTC)


def _listing(request: Message) -> str:
    """What a listing's page tokens are bound to: its RPC and query, and the caller."""
    caller = require_principal()
    return paging.query_key(request, caller.tenant_id, caller.subject)


def _check_roles(actor: Actor, view_policy: Any, new_roles: set[str], old_roles: set[str], path: str) -> None:
    defined = permissions.role_permissions(view_policy)
    unknown = sorted(new_roles - defined.keys())
    if unknown:
        raise InvalidArgument(
            "unknown role", field_violations=[(path, f"role {unknown[0]!r} is not in the tenant policy")]
        )
    _check_holds(actor, view_policy, new_roles - old_roles, doing="granting a role")


def _check_not_above(actor: Actor, view_policy: Any, user: dict[str, Any], asserted: Iterable[str]) -> None:
    """Refuse acting on ``user``'s account or credentials (changing, disabling, minting or revoking a key)
    when they hold more than the caller: otherwise a lesser admin could lock out or impersonate a greater one.
    What they hold: their row's roles and the roles the tenant's identity providers asserted at their recorded
    sign-ins (``asserted``: an OIDC user's rank comes from its provider, not its row). A key acts with its
    user's roles, so the user's roles count, not a key's scopes."""
    _check_holds(
        actor, view_policy, {*user["roles"], *asserted}, doing="acting on a user who holds more than you"
    )


async def _asserted(session: AsyncSession, view_policy: Any, user_id: str) -> tuple[set[str], bool]:
    """The roles the tenant's identity providers asserted for ``user_id`` at its recorded sign-ins, and whether
    a provider that asserts roles (``roles_claim``) has never signed it in: that provider's next token for
    this subject could then claim any role, so nobody can tell what the subject holds. Providers no longer in
    the policy sign nobody in and do not count."""
    providers = {provider.issuer: provider for provider in view_policy.identity_providers}
    recorded = await AuthStore.asserted_roles(session, user_id, sorted(providers))
    unseen = any(provider.roles_claim and issuer not in recorded for issuer, provider in providers.items())
    return {role for roles in recorded.values() for role in roles}, unseen


def _check_holds(actor: Actor, view_policy: Any, roles: Iterable[str], *, doing: str) -> None:
    """Refuse ``doing`` unless the caller holds all that ``roles`` grant (roles the policy does not define
    grant nothing); platform operators may."""
    if actor.is_platform:
        return
    defined = permissions.role_permissions(view_policy)
    policy.check_held(
        {role: defined[role] for role in roles if role in defined}, actor.permissions, doing=doing
    )


class TenantAdminServicer(tenant_admin_service_pb2_grpc.TenantAdminServiceServicer):
    def __init__(self, access: Access, hasher: KeyHasher) -> None:
        self._access = access
        self._store: AuthStore = access.store
        self._hasher = hasher

    # -- tenants ------------------------------------------------------------------------------------------

    async def CreateTenant(self, request: pb.CreateTenantRequest, context: Ctx) -> pb.CreateTenantResponse:
        tenant_id = check_tenant_id(request.tenant.tenant_id, "tenant.tenant_id")
        if not request.tenant.display_name:
            raise InvalidArgument(
                "display_name is required", field_violations=[("tenant.display_name", "required")]
            )
        too_long = bounds.text_violations(request.tenant.display_name, "tenant.display_name")
        if too_long:
            raise InvalidArgument("display_name is too long", field_violations=too_long)
        actor = await self._access.require(SERVICE + "CreateTenant", tenant_id, platform_only=True)
        async with self._access.change(actor, SERVICE + "CreateTenant", tenant_id, tenant_id) as change:
            row = (
                (
                    await change.session.execute(
                        text(
                            "INSERT INTO tenants (tenant_id, display_name) VALUES (:t, :n)"
                            " ON CONFLICT DO NOTHING RETURNING *"
                        ),
                        {"t": tenant_id, "n": request.tenant.display_name},
                    )
                )
                .mappings()
                .one_or_none()
            )
            if row is None:
                raise AlreadyExists("the tenant exists already", reason="TENANT_ALREADY_EXISTS")
            initial = permissions.default_policy(platform=tenant_id == self._access.platform_tenant)
            await AuthStore.insert_policy(change.session, tenant_id, 1, initial, actor.principal.subject)
            change.attributes["policy_version"] = "1"
        return pb.CreateTenantResponse(tenant=records.tenant(dict(row)))

    async def GetTenant(self, request: pb.GetTenantRequest, context: Ctx) -> pb.GetTenantResponse:
        tenant_id = check_tenant_id(request.tenant_id)
        await self._access.require(SERVICE + "GetTenant", tenant_id)
        view = await self._access.existing(tenant_id)
        return pb.GetTenantResponse(tenant=records.tenant(view.row))

    async def ListTenants(self, request: pb.ListTenantsRequest, context: Ctx) -> pb.ListTenantsResponse:
        await self._access.require(SERVICE + "ListTenants", "", platform_only=True)
        size = paging.page_size(request.page_size, default=PAGE_SIZE)
        listing = _listing(request)
        after = paging.decode_text(request.page_token, listing) or ""
        async with self._store.platform() as session:
            rows = (
                (
                    await session.execute(
                        text(
                            "SELECT * FROM tenants WHERE tenant_id > :a AND (:all OR state = 'active')"
                            " ORDER BY tenant_id LIMIT :n"
                        ),
                        {"a": after, "all": request.show_disabled, "n": size + 1},
                    )
                )
                .mappings()
                .all()
            )
        page = [records.tenant(dict(r)) for r in rows[:size]]
        token = paging.encode([page[-1].tenant_id], listing) if len(rows) > size else ""
        return pb.ListTenantsResponse(tenants=page, next_page_token=token)

    async def _set_state(self, method: str, tenant_id: str, state: str, reason: str) -> Any:
        check_tenant_id(tenant_id)
        actor = await self._access.require(SERVICE + method, tenant_id, platform_only=True)
        if state == "disabled" and tenant_id == self._access.platform_tenant:
            raise InvalidArgument(
                "the platform tenant cannot be disabled", field_violations=[("tenant_id", "platform tenant")]
            )
        async with self._access.change(actor, SERVICE + method, tenant_id, tenant_id) as change:
            row = (
                (
                    await change.session.execute(
                        text(
                            "UPDATE tenants SET state = :s, update_time = now(),"
                            " disable_time = CASE WHEN :s = 'disabled' THEN coalesce(disable_time, now()) END"
                            " WHERE tenant_id = :t RETURNING *"
                        ),
                        {"s": state, "t": tenant_id},
                    )
                )
                .mappings()
                .one_or_none()
            )
            if row is None:
                raise NotFound("no such tenant", metadata={"resource": f"tenants/{tenant_id}"})
            # The contract's "why, for the audit trail", bounded as RevokeApiKey's.
            change.attributes["reason"] = reason[:500]
        return records.tenant(dict(row))

    async def DisableTenant(self, request: pb.DisableTenantRequest, context: Ctx) -> pb.DisableTenantResponse:
        return pb.DisableTenantResponse(
            tenant=await self._set_state("DisableTenant", request.tenant_id, "disabled", request.reason)
        )

    async def EnableTenant(self, request: pb.EnableTenantRequest, context: Ctx) -> pb.EnableTenantResponse:
        return pb.EnableTenantResponse(
            tenant=await self._set_state("EnableTenant", request.tenant_id, "active", request.reason)
        )

    # -- API keys -----------------------------------------------------------------------------------------

    async def CreateApiKey(self, request: pb.CreateApiKeyRequest, context: Ctx) -> pb.CreateApiKeyResponse:
        tenant_id = check_tenant_id(request.tenant_id)
        spec = request.api_key
        problems = _user_id_violations(spec.user_id, "api_key.user_id")
        problems += bounds.text_violations(spec.display_name, "api_key.display_name")
        # A scope named twice is one scope; an unknown one is named by its first place (one violation per
        # name, not per repeat: the error's details must fit in gRPC's metadata). Only the first names past
        # the known ones' count are looked at: so many distinct names hold an unknown one whatever follows.
        first_places: dict[str, int] = {}
        for place, scope in enumerate(spec.scopes):
            if scope in first_places:
                continue
            if len(first_places) > len(permissions.BY_NAME):
                break
            first_places[scope] = place
        problems += [
            (f"api_key.scopes[{place}]", "unknown permission name")
            for scope, place in first_places.items()
            if scope not in permissions.BY_NAME
        ]
        # Past the check below every scope is known, so the loop saw them all: its keys are the distinct scopes.
        scopes = list(first_places)
        expire = wellknown.as_datetime(spec.expire_time) if spec.HasField("expire_time") else None
        if spec.HasField("expire_time") and expire is None:
            problems.append(("api_key.expire_time", "not a valid timestamp"))
        elif expire is not None and expire <= _now():
            problems.append(("api_key.expire_time", "must be in the future"))
        if problems:
            raise InvalidArgument("the API key request is invalid", field_violations=problems)
        actor = await self._access.require(SERVICE + "CreateApiKey", tenant_id)
        prefix, secret = apikeys.generate()
        key_id = str(uuid.uuid4())
        async with self._access.change(actor, SERVICE + "CreateApiKey", tenant_id, key_id) as change:
            owner = await self._store.user(change.session, spec.user_id)
            if owner is None:
                raise NotFound("no such user", metadata={"resource": f"users/{spec.user_id}"})
            # A key acts with its user's roles: minting one for a more privileged user is an escalation.
            view = await self._access.existing(tenant_id)
            asserted, _ = await _asserted(change.session, view.policy, spec.user_id)
            _check_not_above(actor, view.policy, owner, asserted)
            row = (
                (
                    await change.session.execute(
                        text(
                            "INSERT INTO api_keys (tenant_id, api_key_id, prefix, secret_hash, user_id, display_name,"
                            " scopes, expire_time) VALUES (:t, :k, :p, :h, :u, :n, :s, :e) RETURNING *"
                        ),
                        {
                            "t": tenant_id,
                            "k": key_id,
                            "p": prefix,
                            "h": self._hasher.hash(secret),
                            "u": spec.user_id,
                            "n": spec.display_name,
                            "s": scopes,
                            "e": expire,
                        },
                    )
                )
                .mappings()
                .one()
            )
            await change.session.execute(
                text("INSERT INTO api_key_prefixes (prefix, tenant_id) VALUES (:p, :t)"),
                {"p": prefix, "t": tenant_id},
            )
            change.attributes.update(
                {"prefix": "pk_" + prefix, "user_id": spec.user_id, "scopes": ",".join(scopes)}
            )
        return pb.CreateApiKeyResponse(api_key=records.api_key(dict(row), _now()), secret=secret)

    async def ListApiKeys(self, request: pb.ListApiKeysRequest, context: Ctx) -> pb.ListApiKeysResponse:
        tenant_id = check_tenant_id(request.tenant_id)
        size = paging.page_size(request.page_size, default=PAGE_SIZE)
        listing = _listing(request)
        after = paging.decode_moment_and_id(request.page_token, listing)
        await self._access.require(SERVICE + "ListApiKeys", tenant_id)
        query = "SELECT * FROM api_keys WHERE (:u = '' OR user_id = :u)"
        if not request.show_inactive:
            query += " AND revoke_time IS NULL AND (expire_time IS NULL OR expire_time > now())"
        if after:
            query += " AND (create_time, api_key_id) < (CAST(:c AS timestamptz), CAST(:k AS uuid))"
        query += " ORDER BY create_time DESC, api_key_id DESC LIMIT :n"
        params = {
            "u": request.user_id,
            "n": size + 1,
            "c": after[0] if after else None,
            "k": after[1] if after else None,
        }
        async with self._store.tenant(tenant_id) as session:
            rows = [dict(r) for r in (await session.execute(text(query), params)).mappings().all()]
        now = _now()
        token = ""
        if len(rows) > size:
            last = rows[size - 1]
            token = paging.encode([last["create_time"].isoformat(), str(last["api_key_id"])], listing)
        return pb.ListApiKeysResponse(
            api_keys=[records.api_key(r, now) for r in rows[:size]], next_page_token=token
        )

    async def RevokeApiKey(self, request: pb.RevokeApiKeyRequest, context: Ctx) -> pb.RevokeApiKeyResponse:
        tenant_id = check_tenant_id(request.tenant_id)
        try:
            key_id = str(uuid.UUID(request.api_key_id))
        except ValueError:
            raise InvalidArgument(
                "api_key_id is invalid", field_violations=[("api_key_id", "not a key id")]
            ) from None
        actor = await self._access.require(SERVICE + "RevokeApiKey", tenant_id)
        view = await self._access.existing(tenant_id)
        async with self._access.change(actor, SERVICE + "RevokeApiKey", tenant_id, key_id) as change:
            owner = await self._store.key_owner(change.session, key_id)
            if owner is None:
                raise NotFound("no such API key", metadata={"resource": f"api_keys/{key_id}"})
            # Revoking a greater admin's keys locks them out: the same rule as disabling them.
            asserted, _ = await _asserted(change.session, view.policy, owner["user_id"])
            _check_not_above(actor, view.policy, owner, asserted)
            row = (
                (
                    await change.session.execute(
                        text(
                            "UPDATE api_keys SET revoke_time = coalesce(revoke_time, now())"
                            " WHERE api_key_id = :k RETURNING *"
                        ),
                        {"k": key_id},
                    )
                )
                .mappings()
                .one()
            )
            change.attributes.update({"prefix": "pk_" + row["prefix"], "reason": request.reason[:500]})
        return pb.RevokeApiKeyResponse(api_key=records.api_key(dict(row), _now()))

    # -- users ----------------------------------------------------------------------------------------------

    async def CreateUser(self, request: pb.CreateUserRequest, context: Ctx) -> pb.CreateUserResponse:
        tenant_id = check_tenant_id(request.tenant_id)
        spec = request.user
        _check_user(spec, {"display_name", "email", "roles", "groups"})
        _check_fits_a_token(spec.user_id, spec.roles, spec.groups, {"user_id", "roles", "groups"})
        actor = await self._access.require(SERVICE + "CreateUser", tenant_id)
        view = await self._access.existing(tenant_id)
        _check_roles(actor, view.policy, set(spec.roles), set(), "user.roles")
        kind = "service_account" if spec.kind == user_pb2.USER_KIND_SERVICE_ACCOUNT else "person"
        state = "disabled" if spec.state == user_pb2.USER_STATE_DISABLED else "active"
        async with self._access.change(actor, SERVICE + "CreateUser", tenant_id, spec.user_id) as change:
            # A user row merges into the sign-ins of the OIDC subject of that name (its state, roles, groups)
            # and its keys act as that subject: creating one acts on whoever the tenant's providers sign in so.
            asserted, unseen = await _asserted(change.session, view.policy, spec.user_id)
            _check_holds(actor, view.policy, asserted, doing="acting on a user who holds more than you")
            if unseen:
                # Not yet signed in by a provider that asserts roles: it may be anyone, an admin included.
                _check_holds(
                    actor,
                    view.policy,
                    permissions.role_permissions(view.policy).keys(),
                    doing="creating a user an identity provider has not signed in yet (it could assert any role)",
                )
            row = (
                (
                    await change.session.execute(
                        text(
                            "INSERT INTO users (tenant_id, user_id, display_name, email, kind, roles, groups, state)"
                            " VALUES (:t, :u, :n, :e, :k, :r, :g, :s) ON CONFLICT DO NOTHING RETURNING *"
                        ),
                        {
                            "t": tenant_id,
                            "u": spec.user_id,
                            "n": spec.display_name,
                            "e": spec.email,
                            "k": kind,
                            "r": sorted(set(spec.roles)),
                            "g": sorted(set(spec.groups)),
                            "s": state,
                        },
                    )
                )
                .mappings()
                .one_or_none()
            )
            if row is None:
                raise AlreadyExists("the user exists already", reason="USER_ALREADY_EXISTS")
            change.attributes.update({"roles": ",".join(row["roles"]), "groups": ",".join(row["groups"])})
        return pb.CreateUserResponse(user=records.user(dict(row)))

    async def GetUser(self, request: pb.GetUserRequest, context: Ctx) -> pb.GetUserResponse:
        tenant_id = check_tenant_id(request.tenant_id)
        _check_user_id(request.user_id, "user_id")
        await self._access.require(SERVICE + "GetUser", tenant_id)
        row = await self._store.user_record(tenant_id, request.user_id)
        if row is None:
            raise NotFound("no such user", metadata={"resource": f"users/{request.user_id}"})
        return pb.GetUserResponse(user=records.user(row))

    async def ListUsers(self, request: pb.ListUsersRequest, context: Ctx) -> pb.ListUsersResponse:
        tenant_id = check_tenant_id(request.tenant_id)
        size = paging.page_size(request.page_size, default=PAGE_SIZE)
        listing = _listing(request)
        after = paging.decode_text(request.page_token, listing) or ""
        await self._access.require(SERVICE + "ListUsers", tenant_id)
        async with self._store.tenant(tenant_id) as session:
            rows = (
                (
                    await session.execute(
                        text(
                            "SELECT * FROM users WHERE user_id > :a AND (:r = '' OR :r = ANY(roles))"
                            " AND (:g = '' OR :g = ANY(groups)) ORDER BY user_id LIMIT :n"
                        ),
                        {
                            "a": after,
                            "r": request.role,
                            "g": request.group,
                            "n": size + 1,
                        },
                    )
                )
                .mappings()
                .all()
            )
        page = [records.user(dict(r)) for r in rows[:size]]
        token = paging.encode([page[-1].user_id], listing) if len(rows) > size else ""
        return pb.ListUsersResponse(users=page, next_page_token=token)

    async def UpdateUser(self, request: pb.UpdateUserRequest, context: Ctx) -> pb.UpdateUserResponse:
        tenant_id = check_tenant_id(request.tenant_id)
        paths = set(request.update_mask.paths)
        if not paths or not paths <= USER_FIELDS:
            raise InvalidArgument(
                "update_mask is invalid",
                field_violations=[("update_mask", f"one or more of {sorted(USER_FIELDS)}")],
            )
        spec = request.user
        _check_user(spec, paths)
        actor = await self._access.require(SERVICE + "UpdateUser", tenant_id)
        view = await self._access.existing(tenant_id)
        async with self._access.change(actor, SERVICE + "UpdateUser", tenant_id, spec.user_id) as change:
            old = await self._store.user(change.session, spec.user_id)
            if old is None:
                raise NotFound("no such user", metadata={"resource": f"users/{spec.user_id}"})
            asserted, _ = await _asserted(change.session, view.policy, spec.user_id)
            _check_not_above(actor, view.policy, old, asserted)
            new = dict(old)
            if "roles" in paths:
                _check_roles(actor, view.policy, set(spec.roles), set(old["roles"]), "user.roles")
                new["roles"] = sorted(set(spec.roles))
            if "groups" in paths:
                new["groups"] = sorted(set(spec.groups))
            if paths & {"roles", "groups"}:
                # With the stored values of what the mask leaves: the token carries them together.
                _check_fits_a_token(spec.user_id, new["roles"], new["groups"], paths)
            if "display_name" in paths:
                new["display_name"] = spec.display_name
            if "email" in paths:
                new["email"] = spec.email
            if "state" in paths:
                new["state"] = "disabled" if spec.state == user_pb2.USER_STATE_DISABLED else "active"
            row = (
                (
                    await change.session.execute(
                        text(
                            "UPDATE users SET roles = :r, groups = :g, display_name = :n, email = :e, state = :s,"
                            " update_time = now() WHERE user_id = :u RETURNING *"
                        ),
                        {
                            "r": new["roles"],
                            "g": new["groups"],
                            "n": new["display_name"],
                            "e": new["email"],
                            "s": new["state"],
                            "u": spec.user_id,
                        },
                    )
                )
                .mappings()
                .one()
            )
            change.attributes.update(
                {
                    "fields": ",".join(sorted(paths)),
                    "roles": ",".join(row["roles"]),
                    "groups": ",".join(row["groups"]),
                }
            )
        return pb.UpdateUserResponse(user=records.user(dict(row)))

    # -- policies -------------------------------------------------------------------------------------------

    async def GetTenantPolicy(
        self, request: pb.GetTenantPolicyRequest, context: Ctx
    ) -> pb.GetTenantPolicyResponse:
        tenant_id = check_tenant_id(request.tenant_id)
        if request.version < 0:
            raise InvalidArgument(
                "version is invalid", field_violations=[("version", "must not be negative")]
            )
        await self._access.require(SERVICE + "GetTenantPolicy", tenant_id)
        async with self._store.tenant(tenant_id) as session:
            found = await self._store.policy(session, request.version)
        if found is None:
            raise NotFound("no such policy version", metadata={"resource": f"tenants/{tenant_id}/policy"})
        return pb.GetTenantPolicyResponse(policy=found)

    async def UpdateTenantPolicy(
        self, request: pb.UpdateTenantPolicyRequest, context: Ctx
    ) -> pb.UpdateTenantPolicyResponse:
        tenant_id = check_tenant_id(request.tenant_id)
        if request.expected_version <= 0:
            raise InvalidArgument(
                "expected_version is required", field_violations=[("expected_version", "the current version")]
            )
        policy.validate(request.policy)
        actor = await self._access.require(SERVICE + "UpdateTenantPolicy", tenant_id)
        if tenant_id == self._access.platform_tenant:
            policy.check_platform_policy(request.policy)
        method = SERVICE + "UpdateTenantPolicy"
        async with self._access.change(actor, method, tenant_id, f"tenants/{tenant_id}/policy") as change:
            current = await self._store.policy(change.session, 0)
            if current is None:
                raise NotFound("no such tenant", metadata={"resource": f"tenants/{tenant_id}"})

            def mismatch(current_version: int) -> Aborted:
                return Aborted(
                    "the policy changed since expected_version",
                    reason="POLICY_VERSION_MISMATCH",
                    metadata={"current_version": str(current_version)},
                )

            if current.version != request.expected_version:
                raise mismatch(current.version)
            policy.check_grants(
                current,
                request.policy,
                actor.permissions,
                platform_tenant=tenant_id == self._access.platform_tenant,
                is_platform=actor.is_platform,
            )
            version = current.version + 1
            if not await AuthStore.insert_policy(
                change.session, tenant_id, version, request.policy, actor.principal.subject
            ):
                # A concurrent edit stored ``version`` since the read above: name the version now current (read
                # again), not the one read, which is expected_version (until 2026-12-06 it named that).
                won = await self._store.policy(change.session, 0)
                raise mismatch(max(won.version if won is not None else 0, version))
            # In the policy's transaction: the routes change with the policy, or neither does.
            pairs = [
                ((i, j), (provider.issuer, audience))
                for i, provider in enumerate(request.policy.identity_providers)
                for j, audience in enumerate(provider.audiences)
            ]
            taken = await AuthStore.replace_oidc_routes(
                change.session, tenant_id, [pair for _, pair in pairs]
            )
            if taken is not None:
                (i, j), (issuer, audience) = pairs[taken]
                # Says that the pair is taken (the tenant cannot have it), never by whom.
                raise InvalidArgument(
                    "an identity provider's issuer and audience belong to another tenant",
                    reason="POLICY_INVALID",
                    field_violations=[
                        (
                            f"policy.identity_providers[{i}].audiences[{j}]",
                            f"issuer {issuer!r} with audience {audience!r} is used by another tenant",
                        )
                    ],
                )
            change.attributes["policy_version"] = str(version)
            stored = await self._store.policy(change.session, version)
        assert stored is not None
        return pb.UpdateTenantPolicyResponse(policy=stored)
