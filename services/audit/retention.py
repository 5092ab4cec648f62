"""Dropping bodies: the retention job (bodies past their retention) and erasure of a user's bodies.

Only ``prompt`` and ``response`` are cleared and ``erase_time`` set; the metadata, which holds the bodies'
hashes, and every hash of the chain stay as they were, so the chain still verifies afterwards. An erasure also
leaves a marker (``erasures``) that appends read, for the user's records still waiting in the AUDIT stream.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.kit.database import Database

_EXPIRED = text(
    """
    UPDATE records SET prompt = NULL, response = NULL, erase_time = :now
    WHERE (tenant_id, sequence) IN (
        SELECT tenant_id, sequence FROM records
        WHERE erase_time IS NULL AND body_expire_time IS NOT NULL AND body_expire_time <= :now
        LIMIT :limit
    )
    """
)
_ERASE = text(
    """
    UPDATE records SET prompt = NULL, response = NULL, erase_time = now()
    WHERE user_id = :user_id AND kind = 'interaction' AND erase_time IS NULL
      AND (prompt IS NOT NULL OR response IS NOT NULL)
    """
)


async def drop_expired_bodies(database: Database, now: datetime, *, batch: int = 5000) -> int:
    """Clear every body whose retention ended by ``now``, all tenants, in bounded transactions."""
    total = 0
    while True:
        # A cross-tenant job: runs as the owner, outside any caller's tenant scope.
        async with database.transaction() as session:
            result = await session.execute(_EXPIRED, {"now": now, "limit": batch})
        count = int(getattr(result, "rowcount", 0) or 0)
        total += count
        if count < batch:
            return total


# The erasure's time per user (the latest wins): a record of the user created before it that is stored later,
# having waited in the AUDIT stream, is stored without its bodies (store._apply_erasures). Same now() as _ERASE.
_MARK = text(
    """
    INSERT INTO erasures (tenant_id, user_id, erase_time)
    VALUES (current_setting('parapet.tenant_id'), :user_id, now())
    ON CONFLICT (tenant_id, user_id) DO UPDATE SET erase_time = greatest(erasures.erase_time, EXCLUDED.erase_time)
    """
)


async def erase_user_bodies(session: AsyncSession, user_id: str) -> int:
    """Clear the bodies of ``user_id``'s interactions in ``session``'s tenant scope, now and of those stored later
    but created before now; returns how many stored ones changed. The caller holds the tenant's head lock, so no
    append interleaves (see store._append_tenants)."""
    result = await session.execute(_ERASE, {"user_id": user_id})
    await session.execute(_MARK, {"user_id": user_id})
    return int(getattr(result, "rowcount", 0) or 0)
