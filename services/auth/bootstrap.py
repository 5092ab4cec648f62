"""What must exist before anyone can log in: the platform tenant, and optionally a first operator key."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from sqlalchemy import text

from services.auth import apikeys, permissions
from services.auth.apikeys import KeyHasher
from services.auth.store import AuthStore

log = logging.getLogger(__name__)

OPERATOR = "operator"


async def ensure_platform_tenant(
    store: AuthStore, tenant_id: str, hasher: KeyHasher, bootstrap_key_file: Path | None
) -> None:
    """The operators' tenant exists from the first start (replicas starting together both succeed).

    With ``bootstrap_key_file``, the first start also creates the user ``operator`` (role
    ``platform-admin``) and an API key for it, written to that file only: the one way in before any
    credential exists. Later starts find the user and create nothing.
    """
    async with store.tenant(tenant_id) as session:
        await session.execute(
            text(
                "INSERT INTO tenants (tenant_id, display_name) VALUES (:t, 'Platform') ON CONFLICT DO NOTHING"
            ),
            {"t": tenant_id},
        )
        policy = permissions.default_policy(platform=True)
        await AuthStore.insert_policy(session, tenant_id, 1, policy, "parapet")
        if bootstrap_key_file is None:
            return
        created = await session.execute(
            text(
                "INSERT INTO users (tenant_id, user_id, display_name, kind, roles)"
                " VALUES (:t, :u, 'Platform operator', 'service_account', :r)"
                " ON CONFLICT DO NOTHING RETURNING user_id"
            ),
            {"t": tenant_id, "u": OPERATOR, "r": [permissions.PLATFORM_ADMIN_ROLE]},
        )
        if created.scalar_one_or_none() is None:
            return
        prefix, key = apikeys.generate()
        await session.execute(
            text(
                "INSERT INTO api_keys (tenant_id, api_key_id, prefix, secret_hash, user_id, display_name)"
                " VALUES (:t, :k, :p, :h, :u, 'bootstrap')"
            ),
            {"t": tenant_id, "k": str(uuid.uuid4()), "p": prefix, "h": hasher.hash(key), "u": OPERATOR},
        )
        await session.execute(
            text("INSERT INTO api_key_prefixes (prefix, tenant_id) VALUES (:p, :t)"),
            {"p": prefix, "t": tenant_id},
        )
        # Written before the commit: if writing fails, no key is created that nobody could ever know.
        fd = os.open(bootstrap_key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key + "\n")
        log.warning("bootstrap platform operator key written", extra={"path": str(bootstrap_key_file)})
