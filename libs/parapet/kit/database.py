"""PostgreSQL for one service: an async SQLAlchemy 2 engine (psycopg 3) bound to the service's schema.

Each service owns one schema (named after it) and nothing else. Connections put that schema first on the
``search_path`` (then ``public``, where extensions such as pgvector live), so a service's SQL and models
use unqualified table names and cannot wander into another service's tables by accident.
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from parapet.kit.dependency import database_down
from parapet.kit.errors import Unavailable

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Words SET ROLE reads as something else than a role: "none" resets to the session's own user, the owner.
_RESERVED_ROLES = frozenset({"none", "default", "public", "current_user", "current_role", "session_user"})


def check_schema_name(schema: str, what: str = "schema name") -> str:
    """Schema (and role) names end up in SQL text, so only plain lower-case identifiers are accepted."""
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"invalid {what} {schema!r}: use lower-case letters, digits and underscores")
    return schema


def engine_options(schema: str, connect_timeout: float = 5.0) -> dict[str, Any]:
    """Engine keyword arguments shared by the runtime engine and the migration engine."""
    return {
        # A dead pooled connection (database restarted) is replaced instead of failing one request.
        "pool_pre_ping": True,
        "connect_args": {
            "options": f"-c search_path={check_schema_name(schema)},public",
            # Fail fast when the server is unreachable, so health turns NOT_SERVING promptly.
            "connect_timeout": max(1, int(connect_timeout)),
        },
    }


@functools.cache
def _check_role(role: str) -> None:
    """Refuse a name that is no role of ours; once per name (the roles are the services' constants, and this
    runs on every scoped transaction)."""
    if check_schema_name(role, "role name") in _RESERVED_ROLES:
        raise ValueError(f"{role!r} names no role of ours (SET ROLE {role} would leave row-level security)")


class Database:
    """The async engine of one service's schema, with session and transaction helpers."""

    def __init__(self, url: str, schema: str, *, pool_size: int = 5, max_overflow: int = 5) -> None:
        self.schema = check_schema_name(schema)
        self.engine: AsyncEngine = create_async_engine(
            url, pool_size=pool_size, max_overflow=max_overflow, **engine_options(schema)
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """An ORM session; the caller commits (or uses :meth:`transaction`)."""
        async with self.sessions() as session:
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on any exception."""
        async with self.sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def tenant_transaction(self, tenant_id: str) -> AsyncIterator[AsyncSession]:
        """A transaction with ``parapet.tenant_id`` set for row-level security policies.

        ``set_config(..., true)`` is ``SET LOCAL``: the setting ends with the transaction, so a pooled
        connection never carries one tenant's id into another tenant's request. It is a bound parameter,
        never interpolated SQL.
        """
        if not tenant_id:
            raise ValueError("tenant_id must not be empty")
        async with self.transaction() as session:
            await session.execute(text("SELECT set_config('parapet.tenant_id', :t, true)"), {"t": tenant_id})
            yield session

    @asynccontextmanager
    async def scoped_transaction(
        self, *, tenant_id: str | None = None, scope: str | None = None, role: str | None = None
    ) -> AsyncIterator[AsyncSession]:
        """A transaction that row-level security policies can tell apart, every setting ending with it.

        ``tenant_id`` sets ``parapet.tenant_id`` (one tenant's rows, as :meth:`tenant_transaction`); ``scope`` sets
        ``parapet.scope``, naming a cross-tenant job (an expiry sweep, say) that policies of its own allow and
        narrow to what the job does; ``role`` runs the transaction under ``SET LOCAL ROLE`` so the policies apply
        even when the service connects as the tables' owner (a table's owner is exempt unless FORCE'd, a
        superuser always).

        A lost or refused connection is raised as UNAVAILABLE (``Unavailable``, retry in a second), so that code
        off the RPC path (a job worker, a relay) can tell an outage from a bug, as the kit's error interceptor
        does for RPCs. A connection lost during COMMIT is raised so too, although the write may have landed:
        what a retry repeats must be idempotent (every writer here is keyed: request, record, job, item ids).
        """
        if role is not None:
            _check_role(role)
        opened = self.tenant_transaction(tenant_id) if tenant_id is not None else self.transaction()
        try:
            async with opened as session:
                if scope is not None:
                    await session.execute(text("SELECT set_config('parapet.scope', :s, true)"), {"s": scope})
                if role is not None:
                    await session.execute(text(f"SET LOCAL ROLE {role}"))
                yield session
        except Exception as error:
            if not database_down(error):
                raise
            raise Unavailable(f"the {self.schema} database is unavailable", retry_after=1.0) from error

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection in a transaction (for bulk SQL without the ORM)."""
        async with self.engine.begin() as connection:
            yield connection

    async def ping(self) -> bool:
        """True when the database answers ``SELECT 1`` (the health probe; bound by the caller's timeout)."""
        async with self.engine.connect() as connection:
            return (await connection.execute(text("SELECT 1"))).scalar() == 1

    async def close(self) -> None:
        await self.engine.dispose()
