"""Tenant-scoped transactions under row-level security.

Row-level security does not apply to a table's owner or to superusers, and the service connects as the
owner (it runs the migrations). So every statement made on behalf of one tenant runs in a transaction that
sets ``parapet.tenant_id`` (the kit's ``tenant_transaction``) *and* switches, for that transaction only, to
the non-owner role ``parapet_audit_tenant``, which the policies confine to that tenant. The role may not
delete anything nor rewrite chained columns (see the migration). Cross-tenant background jobs (retention,
checkpoints) run as the owner on purpose and never serve a caller's request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.kit.database import Database

TENANT_ROLE = "parapet_audit_tenant"  # created by migration 0001


@asynccontextmanager
async def tenant_scope(database: Database, tenant_id: str) -> AsyncIterator[AsyncSession]:
    """A transaction that sees and writes only ``tenant_id``'s rows, whatever its SQL says."""
    async with database.tenant_transaction(tenant_id) as session:
        await session.execute(text(f"SET LOCAL ROLE {TENANT_ROLE}"))
        yield session
