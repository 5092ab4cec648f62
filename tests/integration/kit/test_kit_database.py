"""The service database: its schema on the search path, tenant setting scoped to one transaction."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from parapet.kit.database import Database


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    schema = f"db_{uuid.uuid4().hex[:10]}"
    # One pooled connection, so the test observes the very connection the tenant setting was made on.
    db = Database(database_url, schema, pool_size=1, max_overflow=0)
    async with db.connect() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        await conn.execute(text("CREATE TABLE notes (id serial primary key, body text)"))
    try:
        yield db
    finally:
        async with db.connect() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await db.close()


async def test_unqualified_names_resolve_to_the_service_schema(database: Database) -> None:
    async with database.transaction() as session:
        await session.execute(text("INSERT INTO notes (body) VALUES ('hello')"))
    async with database.session() as session:
        rows = (await session.execute(text(f'SELECT body FROM "{database.schema}".notes'))).all()
    assert [tuple(row) for row in rows] == [("hello",)]
    assert await database.ping()


async def test_tenant_setting_lasts_one_transaction(database: Database) -> None:
    setting = text("SELECT current_setting('parapet.tenant_id', true)")
    async with database.tenant_transaction("tenant-a") as session:
        assert (await session.execute(setting)).scalar() == "tenant-a"
    async with database.transaction() as session:
        assert (await session.execute(setting)).scalar() in (None, "")  # same pooled connection, no tenant


async def test_transaction_rolls_back_on_error(database: Database) -> None:
    with pytest.raises(RuntimeError):
        async with database.transaction() as session:
            await session.execute(text("INSERT INTO notes (body) VALUES ('lost')"))
            raise RuntimeError("fail")
    async with database.session() as session:
        assert (await session.execute(text("SELECT count(*) FROM notes"))).scalar() == 0


async def test_tenant_id_is_a_parameter_not_sql(database: Database) -> None:
    hostile = "a'); DROP TABLE notes; --"
    async with database.tenant_transaction(hostile) as session:
        assert (
            await session.execute(text("SELECT current_setting('parapet.tenant_id')"))
        ).scalar() == hostile
    async with database.session() as session:
        assert (await session.execute(text("SELECT count(*) FROM notes"))).scalar() == 0


async def test_a_scoped_transaction_sets_tenant_scope_and_role_for_itself_only(database: Database) -> None:
    role = f"kit_test_{uuid.uuid4().hex[:8]}"
    async with database.connect() as conn:
        await conn.execute(text(f"CREATE ROLE {role} NOLOGIN"))
    settings = text(
        "SELECT current_setting('parapet.tenant_id', true), current_setting('parapet.scope', true), current_user"
    )
    try:
        async with database.transaction() as session:
            owner = (await session.execute(text("SELECT current_user"))).scalar()
        async with database.scoped_transaction(tenant_id="tenant-a", scope="sweep", role=role) as session:
            assert tuple((await session.execute(settings)).one()) == ("tenant-a", "sweep", role)
        async with database.transaction() as session:  # the same pooled connection, nothing left behind
            assert tuple((await session.execute(settings)).one()) in ((None, None, owner), ("", "", owner))
        with pytest.raises(ValueError, match="invalid role name"):
            async with database.scoped_transaction(role="x; DROP TABLE notes"):
                pass
        with pytest.raises(ValueError, match="names no role"):  # SET ROLE none: back to the owner, past RLS
            async with database.scoped_transaction(role="none"):
                pass
    finally:
        async with database.connect() as conn:
            await conn.execute(text(f"DROP ROLE {role}"))
