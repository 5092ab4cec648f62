"""Tenant-scoped transactions under row-level security.

RLS does not apply to a table's owner or to superusers, and the service connects as the owner (it runs the
migrations). So every statement made on behalf of a tenant runs in a transaction that sets
``parapet.tenant_id`` (the kit's ``tenant_transaction``) and switches, for that transaction only, to the
non-owner role ``parapet_retrieval_tenant``, whose policies confine it to that tenant's rows whatever the
SQL says. Only the outbox relay (cross-tenant, never serving a caller) runs as the owner.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.kit.database import Database

TENANT_ROLE = "parapet_retrieval_tenant"  # created by migration 0001


@asynccontextmanager
async def tenant_scope(database: Database, tenant_id: str) -> AsyncIterator[AsyncSession]:
    """A transaction that sees and writes only ``tenant_id``'s rows."""
    async with database.tenant_transaction(tenant_id) as session:
        await session.execute(text(f"SET LOCAL ROLE {TENANT_ROLE}"))
        yield session
