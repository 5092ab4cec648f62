"""What must exist before anyone can log in: the platform tenant, and optionally a first operator key."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.auth.v1 import tenant_policy_pb2
from services.auth import apikeys, permissions
from services.auth.apikeys import KeyHasher
from services.auth.store import AuthStore

log = logging.getLogger(__name__)

OPERATOR = "operator"
GATEWAY = "gateway"


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
            (OPERATOR, permissions.PLATFORM_ADMIN_ROLE, "Platform operator", bootstrap_key_file, False),
            (GATEWAY, permissions.DELEGATOR_ROLE, "Gateway job workers", gateway_key_file, True),
        )
        for user_id, role, display_name, key_file, reissue in accounts:
            if key_file is not None:
                await _ensure_service_account(
                    session, tenant_id, hasher, user_id, role, display_name, key_file, reissue=reissue
                )


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
    user_id: str,
    role: str,
    display_name: str,
    key_file: Path,
    *,
    reissue: bool,
) -> None:
    created = await session.execute(
        text(
            "INSERT INTO users (tenant_id, user_id, display_name, kind, roles)"
            " VALUES (:t, :u, :d, 'service_account', :r)"
            " ON CONFLICT DO NOTHING RETURNING user_id"
        ),
        {"t": tenant_id, "u": user_id, "d": display_name, "r": [role]},
    )
    # A stat of a local file: not worth a thread hop at service start.
    lost = reissue and not key_file.exists()  # noqa: ASYNC240
    if created.scalar_one_or_none() is None and not lost:
        return
    prefix, key = apikeys.generate()
    await session.execute(
        text(
            "INSERT INTO api_keys (tenant_id, api_key_id, prefix, secret_hash, user_id, display_name)"
            " VALUES (:t, :k, :p, :h, :u, 'bootstrap')"
        ),
        {"t": tenant_id, "k": str(uuid.uuid4()), "p": prefix, "h": hasher.hash(key), "u": user_id},
    )
    await session.execute(
        text("INSERT INTO api_key_prefixes (prefix, tenant_id) VALUES (:p, :t)"),
        {"p": prefix, "t": tenant_id},
    )
    # Written before the commit: if writing fails, no key is created that nobody could ever know.
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    log.warning("bootstrap service account key written", extra={"user": user_id, "path": str(key_file)})
