"""Every SQL statement of the auth service, and the three ways a transaction may see rows.

Row-level security is only real if the queries run as a role that is neither a superuser nor the tables'
owner: the kit's database URL may well be the superuser. So every transaction here starts with
``SET LOCAL ROLE parapet_auth_app`` (a NOLOGIN role that owns nothing) and then sees:

- :meth:`AuthStore.tenant`: one tenant's rows (``parapet.tenant_id`` set by the kit);
- :meth:`AuthStore.lookup`: no tenant's rows, only the two routing tables (prefix -> tenant,
  (issuer, audience) -> tenant) that Authenticate needs before it knows the tenant;
- :meth:`AuthStore.platform`: every tenant's row of ``tenants`` and ``audit_outbox`` (``parapet.scope`` =
  'platform'), for ListTenants and the outbox relay only.

Changes that caches depend on end with ``pg_notify('parapet_auth', tenant_id)``, which PostgreSQL delivers
on commit only, to every replica's listener (see ``services/auth/invalidation.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.auth.v1 import tenant_policy_pb2
from parapet.kit.database import Database

APP_ROLE = "parapet_auth_app"
NOTIFY_CHANNEL = "parapet_auth"


@dataclass(frozen=True)
class KeyRecord:
    """What Authenticate needs about an API key, its user and its tenant, read in one query."""

    api_key_id: str
    secret_hash: bytes
    user_id: str
    scopes: tuple[str, ...]
    expire_time: datetime | None
    revoke_time: datetime | None
    last_use_time: datetime | None
    user_state: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    tenant_state: str
    policy_version: int


@dataclass(frozen=True)
class OidcSubject:
    """What an OIDC sign-in needs about its subject, read in one query: the user row's state, roles and groups
    (``state`` None without a row), the roles its issuer asserted at the recorded sign-in (None: never) and
    the tenant's state (None: no such tenant)."""

    state: str | None
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    recorded_roles: tuple[str, ...] | None
    tenant_state: str | None = None


@dataclass(frozen=True)
class OidcRoute:
    """Where an OIDC token's (issuer, audiences) lead: the distinct tenants holding one of its pairs (no more
    than the token names audiences), the tenant holding (issuer, ``azp``) if any, and whether any tenant trusts
    the issuer at all."""

    tenants: tuple[str, ...]
    issuer_known: bool
    authorized_party_tenant: str | None = None


@dataclass(frozen=True)
class TenantView:
    """A tenant's state and current policy, as Authorize and the admin checks need it."""

    tenant_id: str
    state: str
    policy: tenant_policy_pb2.TenantPolicy
    row: dict[str, Any]


class AuthStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def tenant(self, tenant_id: str) -> AbstractAsyncContextManager[AsyncSession]:
        return self.database.scoped_transaction(tenant_id=tenant_id, role=APP_ROLE)

    def lookup(self) -> AbstractAsyncContextManager[AsyncSession]:
        return self.database.scoped_transaction(role=APP_ROLE)

    def platform(self) -> AbstractAsyncContextManager[AsyncSession]:
        return self.database.scoped_transaction(scope="platform", role=APP_ROLE)

    # -- routing before the tenant is known ------------------------------------------------------------

    async def tenant_for_prefix(self, prefix: str) -> str | None:
        async with self.lookup() as session:
            found = await session.execute(
                text("SELECT tenant_id FROM api_key_prefixes WHERE prefix = :p"), {"p": prefix}
            )
            return found.scalar_one_or_none()

    async def oidc_route(
        self, issuer: str, audiences: Sequence[str], authorized_party: str = ""
    ) -> OidcRoute:
        """The tenants whose providers hold (``issuer``, one of ``audiences``), and the one holding
        (``issuer``, ``authorized_party``), in one round trip."""
        async with self.lookup() as session:
            row = (
                await session.execute(
                    text(
                        "SELECT ARRAY(SELECT DISTINCT tenant_id FROM oidc_issuers"
                        " WHERE issuer = :i AND audience = ANY(CAST(:a AS text[])) ORDER BY 1),"
                        " EXISTS (SELECT 1 FROM oidc_issuers WHERE issuer = :i),"
                        " (SELECT tenant_id FROM oidc_issuers WHERE issuer = :i AND audience = CAST(:z AS text))"
                    ),
                    {"i": issuer, "a": list(audiences), "z": authorized_party or None},
                )
            ).one()
        return OidcRoute(tuple(row[0]), bool(row[1]), row[2])

    # -- reads -----------------------------------------------------------------------------------------

    async def key_record(self, tenant_id: str, prefix: str) -> KeyRecord | None:
        """The key with ``prefix`` (Authenticate)."""
        return await self._key_record(tenant_id, "k.prefix = :p", {"p": prefix})

    async def key_record_by_id(self, tenant_id: str, api_key_id: str) -> KeyRecord | None:
        """The key ``api_key_id`` (IssueDelegatedToken); None for an id that is not a UUID."""
        try:
            key_uuid = str(uuid.UUID(api_key_id))
        except ValueError:
            return None
        return await self._key_record(tenant_id, "k.api_key_id = CAST(:k AS uuid)", {"k": key_uuid})

    async def _key_record(self, tenant_id: str, condition: str, params: dict[str, str]) -> KeyRecord | None:
        async with self.tenant(tenant_id) as session:
            row = (
                (
                    await session.execute(
                        text(
                            """
                        SELECT k.api_key_id::text AS api_key_id, k.secret_hash, k.user_id, k.scopes,
                               k.expire_time, k.revoke_time, k.last_use_time, u.state AS user_state,
                               u.roles, u.groups, t.state AS tenant_state,
                               (SELECT max(version) FROM policies p) AS policy_version
                        FROM api_keys k
                        JOIN users u USING (tenant_id, user_id)
                        JOIN tenants t USING (tenant_id)
                        WHERE """
                            + condition
                        ),
                        params,
                    )
                )
                .mappings()
                .one_or_none()
            )
        if row is None:
            return None
        return KeyRecord(
            api_key_id=row["api_key_id"],
            secret_hash=bytes(row["secret_hash"]),
            user_id=row["user_id"],
            scopes=tuple(row["scopes"]),
            expire_time=row["expire_time"],
            revoke_time=row["revoke_time"],
            last_use_time=row["last_use_time"],
            user_state=row["user_state"],
            roles=tuple(row["roles"]),
            groups=tuple(row["groups"]),
            tenant_state=row["tenant_state"],
            policy_version=int(row["policy_version"] or 0),
        )

    async def tenant_view(self, tenant_id: str, session: AsyncSession | None = None) -> TenantView | None:
        """The tenant and its current policy; inside ``session`` when given (to lock nothing, read only)."""
        if session is None:
            async with self.tenant(tenant_id) as own:
                return await self.tenant_view(tenant_id, own)
        row = (
            (await session.execute(text("SELECT * FROM tenants WHERE tenant_id = :t"), {"t": tenant_id}))
            .mappings()
            .one_or_none()
        )
        if row is None:
            return None
        policy = await self.policy(session, 0)
        return TenantView(tenant_id, row["state"], policy or tenant_policy_pb2.TenantPolicy(), dict(row))

    async def policy(self, session: AsyncSession, version: int) -> tenant_policy_pb2.TenantPolicy | None:
        """Version ``version`` (0 = current) of the session tenant's policy."""
        query = "SELECT version, body, update_time, update_subject FROM policies"
        query += " WHERE version = :v" if version else " ORDER BY version DESC LIMIT 1"
        row = (await session.execute(text(query), {"v": version})).mappings().one_or_none()
        if row is None:
            return None
        policy = tenant_policy_pb2.TenantPolicy.FromString(bytes(row["body"]))
        policy.version = row["version"]
        policy.update_time.FromDatetime(row["update_time"])
        policy.update_subject = row["update_subject"]
        return policy

    async def user_record(self, tenant_id: str, user_id: str) -> dict[str, Any] | None:
        async with self.tenant(tenant_id) as session:
            return await self.user(session, user_id)

    async def user(self, session: AsyncSession, user_id: str) -> dict[str, Any] | None:
        row = (
            (await session.execute(text("SELECT * FROM users WHERE user_id = :u"), {"u": user_id}))
            .mappings()
            .one_or_none()
        )
        return None if row is None else dict(row)

    async def oidc_subject(self, tenant_id: str, subject: str, issuer: str) -> OidcSubject:
        """The user row of ``subject``, what ``issuer`` recorded for it and the tenant's state, in one round
        trip (a sign-in, and ``Access.current`` re-reading an OIDC principal)."""
        async with self.tenant(tenant_id) as session:
            row = (
                (
                    await session.execute(
                        text(
                            "SELECT u.state, u.roles, u.groups, s.roles AS recorded_roles,"
                            " (SELECT t.state FROM tenants t WHERE t.tenant_id = :t) AS tenant_state"
                            " FROM (SELECT CAST(:u AS text) AS subject) q"
                            " LEFT JOIN users u ON u.user_id = q.subject"
                            " LEFT JOIN oidc_subjects s ON s.subject = q.subject AND s.issuer = :i"
                        ),
                        {"u": subject, "i": issuer, "t": tenant_id},
                    )
                )
                .mappings()
                .one()
            )
        recorded = row["recorded_roles"]
        return OidcSubject(
            state=row["state"],
            roles=tuple(row["roles"] or ()),
            groups=tuple(row["groups"] or ()),
            recorded_roles=None if recorded is None else tuple(recorded),
            tenant_state=row["tenant_state"],
        )

    @staticmethod
    async def asserted_roles(
        session: AsyncSession, subject: str, issuers: Sequence[str]
    ) -> dict[str, tuple[str, ...]]:
        """The roles each of ``issuers`` asserted for ``subject`` at its recorded sign-in (issuers that never
        signed it in are absent). The rows are share-locked until ``session`` commits: a change that is judged
        by them must not commit beside a sign-in recording a promotion it did not see (that sign-in's write
        waits; one already written but not committed is waited for and then read)."""
        if not issuers:
            return {}
        rows = await session.execute(
            text("SELECT issuer, roles FROM oidc_subjects WHERE subject = :s AND issuer = ANY(:i) FOR SHARE"),
            {"s": subject, "i": list(issuers)},
        )
        return {issuer: tuple(roles) for issuer, roles in rows}

    async def key_owner(self, session: AsyncSession, api_key_id: str) -> dict[str, Any] | None:
        """The user whose key ``api_key_id`` is (every key has one); None for no such key in the tenant."""
        row = (
            (
                await session.execute(
                    text(
                        "SELECT u.* FROM api_keys k JOIN users u USING (tenant_id, user_id) WHERE k.api_key_id = :k"
                    ),
                    {"k": api_key_id},
                )
            )
            .mappings()
            .one_or_none()
        )
        return None if row is None else dict(row)

    # -- writes ----------------------------------------------------------------------------------------

    @staticmethod
    async def notify(session: AsyncSession, tenant_id: str) -> None:
        await session.execute(text("SELECT pg_notify(:c, :t)"), {"c": NOTIFY_CHANNEL, "t": tenant_id})

    @staticmethod
    async def insert_policy(
        session: AsyncSession,
        tenant_id: str,
        version: int,
        policy: tenant_policy_pb2.TenantPolicy,
        subject: str,
    ) -> bool:
        """Insert ``version``; False when it exists already (a concurrent update won)."""
        body = tenant_policy_pb2.TenantPolicy()
        body.CopyFrom(policy)
        for name in ("version", "update_time", "update_subject"):
            body.ClearField(name)
        try:
            async with session.begin_nested():
                await session.execute(
                    text(
                        "INSERT INTO policies (tenant_id, version, body, update_subject)"
                        " VALUES (:t, :v, :b, :s)"
                    ),
                    {
                        "t": tenant_id,
                        "v": version,
                        "b": body.SerializeToString(deterministic=True),
                        "s": subject,
                    },
                )
        except IntegrityError:
            return False
        return True

    @staticmethod
    async def replace_oidc_routes(
        session: AsyncSession, tenant_id: str, pairs: Sequence[tuple[str, str]]
    ) -> int | None:
        """Route each (issuer, audience) of ``pairs`` to ``tenant_id`` instead of its earlier pairs; returns the
        index in ``pairs`` of one another tenant holds already (the caller then rolls back), else None.

        A pair another transaction is adding or releasing waits for it (the primary key's uniqueness check), so
        two tenants' edits wanting each other's pairs could deadlock, and PostgreSQL would abort one (ABORTED
        for what is a plain conflict over a pair). So every edit takes its pairs in one order: the new ones
        inserted sorted, then the ones it gives up deleted, which waits for no one (only this tenant's edits
        touch its rows, and the policy version serialises them before this). Deleting first held a released
        pair while waiting for a wanted one, whatever the order of the inserts.
        """
        wanted = sorted(set(pairs))  # one provider may list an audience twice: one pair
        params = {"t": tenant_id, "i": [i for i, _ in wanted], "a": [a for _, a in wanted]}
        if wanted:
            await session.execute(
                text(
                    "INSERT INTO oidc_issuers (issuer, audience, tenant_id)"
                    " SELECT i, a, :t FROM unnest(CAST(:i AS text[]), CAST(:a AS text[]))"
                    " WITH ORDINALITY AS p (i, a, n) ORDER BY n ON CONFLICT DO NOTHING"
                ),
                params,
            )
        # The query sees the rows as they were before its own DELETE: ours, the ones just inserted included.
        held = await session.execute(
            text(
                "WITH released AS (DELETE FROM oidc_issuers WHERE tenant_id = :t AND (issuer, audience) NOT IN"
                " (SELECT i, a FROM unnest(CAST(:i AS text[]), CAST(:a AS text[])) AS p (i, a)))"
                " SELECT issuer, audience FROM oidc_issuers WHERE tenant_id = :t"
            ),
            params,
        )
        taken = set(wanted) - {(row[0], row[1]) for row in held}
        return next((index for index, pair in enumerate(pairs) if pair in taken), None)

    @staticmethod
    async def add_outbox(
        session: AsyncSession, record_id: str, tenant_id: str, subject: str, payload: bytes
    ) -> None:
        await session.execute(
            text("INSERT INTO audit_outbox (record_id, tenant_id, subject, payload) VALUES (:r, :t, :s, :p)"),
            {"r": record_id, "t": tenant_id, "s": subject, "p": payload},
        )

    async def record_oidc_subject(
        self, tenant_id: str, subject: str, issuer: str, roles: Sequence[str], issued: datetime | None
    ) -> None:
        """Record that ``issuer`` signed ``subject`` in asserting ``roles`` (sorted, distinct) in a token issued
        at ``issued`` (its ``iat``; None: unknown, oldest). Called only when that differs from what is recorded,
        so a subject costs one write when first seen and one per change. Only a token issued no earlier than the
        recorded one replaces it: an older token still valid after a promotion must not bring the lesser roles
        back (migration 0004)."""
        async with self.tenant(tenant_id) as session:
            await session.execute(
                text(
                    "INSERT INTO oidc_subjects (tenant_id, subject, issuer, roles, issued_time)"
                    " VALUES (:t, :s, :i, :r, coalesce(CAST(:at AS timestamptz), '-infinity'))"
                    " ON CONFLICT (tenant_id, subject, issuer) DO UPDATE SET roles = excluded.roles,"
                    " roles_time = now(), issued_time = excluded.issued_time"
                    " WHERE oidc_subjects.roles IS DISTINCT FROM excluded.roles"
                    " AND excluded.issued_time >= oidc_subjects.issued_time"
                ),
                {"t": tenant_id, "s": subject, "i": issuer, "r": list(roles), "at": issued},
            )

    async def touch_key(self, tenant_id: str, api_key_id: str) -> None:
        async with self.tenant(tenant_id) as session:
            await session.execute(
                text("UPDATE api_keys SET last_use_time = now() WHERE api_key_id = :k"), {"k": api_key_id}
            )

    # -- the outbox relay (platform scope) ---------------------------------------------------------------

    async def pending_outbox(self, limit: int) -> list[tuple[str, str, bytes]]:
        async with self.platform() as session:
            rows = await session.execute(
                text(
                    "SELECT record_id::text, subject, payload FROM audit_outbox WHERE sent_time IS NULL"
                    " ORDER BY create_time LIMIT :n"
                ),
                {"n": limit},
            )
            return [(r[0], r[1], bytes(r[2])) for r in rows]

    async def prune_sent(self, older_than_seconds: float) -> int:
        """Delete records published more than ``older_than_seconds`` ago; returns how many."""
        async with self.platform() as session:
            deleted = await session.execute(
                text("DELETE FROM audit_outbox WHERE sent_time < now() - make_interval(secs => :s)"),
                {"s": older_than_seconds},
            )
            return int(getattr(deleted, "rowcount", 0) or 0)

    async def mark_sent(self, record_ids: Sequence[str]) -> None:
        async with self.platform() as session:
            await session.execute(
                text("UPDATE audit_outbox SET sent_time = now() WHERE record_id = ANY(CAST(:ids AS uuid[]))"),
                {"ids": list(record_ids)},
            )
