"""What must exist before anyone can log in: the platform tenant, and optionally a first operator key.

Two ways in share the code below: auth's own start (:func:`ensure_platform_tenant`, the key written to a file,
as `parapet up` and compose use it) and ``parapet bootstrap`` (:func:`issue_account_key`, the key handed to
the caller once; for Kubernetes, where no file of a pod is the operator's to read).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.audit.v1 import audit_record_pb2
from parapet.auth.v1 import tenant_policy_pb2
from parapet.events.audit import admin_record
from parapet.kit.identity import Principal
from services.auth import apikeys, audit, permissions
from services.auth.apikeys import KeyHasher
from services.auth.store import AuthStore

log = logging.getLogger(__name__)

OPERATOR = "operator"
GATEWAY = "gateway"
# The audit record's method for keys issued by `parapet bootstrap` (the admin RPCs record their gRPC path).
BOOTSTRAP_METHOD = "parapet bootstrap"


@dataclasses.dataclass(frozen=True)
class Account:
    """A platform service account that bootstrapping creates, with the one role it holds."""

    user_id: str
    role: str
    display_name: str


ACCOUNTS = {
    OPERATOR: Account(OPERATOR, permissions.PLATFORM_ADMIN_ROLE, "Platform operator"),
    GATEWAY: Account(GATEWAY, permissions.DELEGATOR_ROLE, "Gateway job workers"),
}


@dataclasses.dataclass(frozen=True)
class IssuedKey:
    """A key just stored: ``secret`` is the whole key, to hand to exactly one place."""

    api_key_id: str
    prefix: str
    secret: str
    replaced: tuple[str, ...] = ()  # ids of the account's keys revoked in its favour


class AccountHasKeyError(Exception):
    """The account already has a key that works: a second root credential is not made silently."""

    def __init__(self, account: Account, live_key_ids: list[str]) -> None:
        super().__init__(f"{account.user_id} already has {len(live_key_ids)} active API key(s)")
        self.account = account
        self.live_key_ids = live_key_ids


class AccountDisabledError(Exception):
    """The account's user is disabled: a key issued for it would never authenticate."""


async def ensure_platform_tenant(
    store: AuthStore,
    tenant_id: str,
    hasher: KeyHasher,
    bootstrap_key_file: Path | None,
    gateway_key_file: Path | None = None,
) -> None:
    """The operators' tenant exists from the first start (replicas starting together both succeed).

    With ``bootstrap_key_file``, the first start also creates the user ``operator`` (role
    ``platform-admin``) and an API key for it, written to that file only: the one way in before any
    credential exists. With ``gateway_key_file``, likewise the service account ``gateway`` (role
    ``token-delegator``) whose key the gateway's job workers authenticate with. Later starts find the
    users and create nothing, except that the gateway's key is issued again when its file is missing (a new
    home for the same database, a lost file): it is a machine credential only this deployment reads, and
    without it queued jobs could never run. The operator's key is never re-issued this way.
    """
    async with store.tenant(tenant_id) as session:
        await session.execute(
            text(
                "INSERT INTO tenants (tenant_id, display_name) VALUES (:t, 'Platform') ON CONFLICT DO NOTHING"
            ),
            {"t": tenant_id},
        )
        policy = permissions.default_policy(platform=True)
        if not await AuthStore.insert_policy(session, tenant_id, 1, policy, "parapet"):
            await _ensure_delegator_role(store, session, tenant_id)
        accounts = (
            (ACCOUNTS[OPERATOR], bootstrap_key_file, False),
            (ACCOUNTS[GATEWAY], gateway_key_file, True),
        )
        for account, key_file, reissue in accounts:
            if key_file is not None:
                await _ensure_service_account(session, tenant_id, hasher, account, key_file, reissue=reissue)


async def _ensure_delegator_role(store: AuthStore, session: AsyncSession, tenant_id: str) -> None:
    """A platform policy written before token delegation existed gains the ``token-delegator`` role once
    (a new policy version); a policy that has the role, however edited since, is left alone."""
    current = await store.policy(session, 0)
    if current is None or any(r.role == permissions.DELEGATOR_ROLE for r in current.roles):
        return
    updated = tenant_policy_pb2.TenantPolicy()
    updated.CopyFrom(current)
    updated.roles.append(permissions.delegator_role())
    if await AuthStore.insert_policy(session, tenant_id, current.version + 1, updated, "parapet"):
        await AuthStore.notify(session, tenant_id)
        log.warning("platform policy gained the token-delegator role", extra={"version": current.version + 1})


async def _ensure_service_account(
    session: AsyncSession,
    tenant_id: str,
    hasher: KeyHasher,
    account: Account,
    key_file: Path,
    *,
    reissue: bool,
) -> None:
    created = await create_account(session, tenant_id, account)
    # A stat of a local file: not worth a thread hop at service start.
    lost = reissue and not key_file.exists()  # noqa: ASYNC240
    if not created and not lost:
        return
    issued = await issue_key(session, tenant_id, hasher, account.user_id)
    # Written before the commit: if writing fails, no key is created that nobody could ever know.
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(issued.secret + "\n")
    log.warning(
        "bootstrap service account key written", extra={"user": account.user_id, "path": str(key_file)}
    )


async def create_account(session: AsyncSession, tenant_id: str, account: Account) -> bool:
    """The account's user row in the session's (platform) tenant; False when it existed already."""
    created = await session.execute(
        text(
            "INSERT INTO users (tenant_id, user_id, display_name, kind, roles)"
            " VALUES (:t, :u, :d, 'service_account', :r)"
            " ON CONFLICT DO NOTHING RETURNING user_id"
        ),
        {"t": tenant_id, "u": account.user_id, "d": account.display_name, "r": [account.role]},
    )
    return created.scalar_one_or_none() is not None


async def issue_key(session: AsyncSession, tenant_id: str, hasher: KeyHasher, user_id: str) -> IssuedKey:
    """A new API key of ``user_id`` named 'bootstrap', stored as its keyed hash; the secret only returned."""
    prefix, secret = apikeys.generate()
    api_key_id = str(uuid.uuid4())
    await session.execute(
        text(
            "INSERT INTO api_keys (tenant_id, api_key_id, prefix, secret_hash, user_id, display_name)"
            " VALUES (:t, :k, :p, :h, :u, 'bootstrap')"
        ),
        {"t": tenant_id, "k": api_key_id, "p": prefix, "h": hasher.hash(secret), "u": user_id},
    )
    await session.execute(
        text("INSERT INTO api_key_prefixes (prefix, tenant_id) VALUES (:p, :t)"),
        {"p": prefix, "t": tenant_id},
    )
    return IssuedKey(api_key_id, prefix, secret)


async def issue_account_key(
    store: AuthStore,
    tenant_id: str,
    hasher: KeyHasher,
    account: Account,
    deliver: Callable[[str], None],
    *,
    replace: bool = False,
) -> IssuedKey:
    """Create ``account`` if needed and issue its first API key, handed to ``deliver`` and nowhere else.

    Refused with :class:`AccountHasKeyError` while the account has a key that is neither revoked nor
    expired; with ``replace`` those keys are revoked instead, in the same transaction (the way back when
    the only platform key is lost). The account's row is locked first, so of two runs at once one issues
    and the other sees its key. The change is audited as the admin RPCs' changes are (an ``admin_action``
    record in the outbox, in the same transaction) and every replica is told to drop its cached keys.
    ``deliver`` runs before the commit: a key that could not be handed over is never stored.
    """
    await ensure_platform_tenant(store, tenant_id, hasher, None)
    async with store.tenant(tenant_id) as session:
        await create_account(session, tenant_id, account)
        await _lock_active_account(session, account)
        live = await _live_key_ids(session, account.user_id)
        if live and not replace:
            raise AccountHasKeyError(account, live)
        await _revoke(session, live)
        issued = await issue_key(session, tenant_id, hasher, account.user_id)
        await audit.write(session, _bootstrap_record(tenant_id, account, issued, live))
        await AuthStore.notify(session, tenant_id)
        deliver(issued.secret)
    return dataclasses.replace(issued, replaced=tuple(live))


async def _lock_active_account(session: AsyncSession, account: Account) -> None:
    state = (
        await session.execute(
            text("SELECT state FROM users WHERE user_id = :u FOR UPDATE"), {"u": account.user_id}
        )
    ).scalar_one()
    if state != "active":
        raise AccountDisabledError(
            f"the user {account.user_id} is {state}: a key of it would not authenticate"
        )


async def _live_key_ids(session: AsyncSession, user_id: str) -> list[str]:
    rows = await session.execute(
        text(
            "SELECT api_key_id::text FROM api_keys WHERE user_id = :u AND revoke_time IS NULL"
            " AND (expire_time IS NULL OR expire_time > now()) ORDER BY create_time"
        ),
        {"u": user_id},
    )
    return list(rows.scalars())


async def _revoke(session: AsyncSession, key_ids: list[str]) -> None:
    if key_ids:
        await session.execute(
            text("UPDATE api_keys SET revoke_time = now() WHERE api_key_id = ANY(CAST(:k AS uuid[]))"),
            {"k": key_ids},
        )


def _bootstrap_record(
    tenant_id: str, account: Account, issued: IssuedKey, revoked: list[str]
) -> audit_record_pb2.AuditRecord:
    # No credential acted: the actor names the tool, and `host` the pod (or machine) it ran on, which the
    # cluster's own audit log ties to whoever ran `kubectl exec` there.
    actor = Principal(tenant_id=tenant_id, subject="parapet-bootstrap", credential_type="service")
    attributes = {
        "prefix": "pk_" + issued.prefix,
        "user_id": account.user_id,
        "role": account.role,
        "host": socket.gethostname(),
    }
    if revoked:
        attributes["revoked_api_key_ids"] = ",".join(revoked)
    return admin_record(tenant_id, actor, BOOTSTRAP_METHOD, issued.api_key_id, attributes=attributes)
