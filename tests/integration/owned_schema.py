"""A fresh database whose service schema is owned by a role that is no superuser, as in production, for migration
tests: FORCE ROW LEVEL SECURITY applies to such an owner, so a migration that forgets a tenant's scope silently
changes (or finds) no row; the suite's embedded PostgreSQL connects as a superuser, which policies exempt."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, create_engine, make_url, text
from sqlalchemy.pool import NullPool


@contextmanager
def owned_schema(database_url: str, schema: str, app_role: str) -> Iterator[tuple[str, str]]:
    """A new database (its URL) with ``schema`` owned by a new role (its name), dropped afterwards. The owner holds
    ``app_role`` with its ADMIN option, as a deployment's owner that created it itself does."""
    suffix = uuid.uuid4().hex[:8]
    name, owner = f"{schema}_migration_{suffix}", f"{schema}_owner_{suffix}"
    admin = create_engine(database_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE ROLE {owner} NOLOGIN CREATEROLE"))
        connection.execute(text(f"CREATE DATABASE {name}"))
        # Roles are cluster-wide: an earlier test's migration, run as the superuser, may have created it already.
        connection.execute(
            text(
                f"DO $$ BEGIN CREATE ROLE {app_role} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
            )
        )
        connection.execute(text(f"GRANT {app_role} TO {owner} WITH ADMIN OPTION"))
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    with create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT").connect() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema} AUTHORIZATION {owner}"))
    try:
        yield url, owner
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
            connection.execute(text(f"DROP OWNED BY {owner}"))
            connection.execute(text(f"DROP ROLE {owner}"))
        admin.dispose()


def as_owner(url: str, owner: str, schema: str) -> Iterator[Connection]:
    """One transaction as ``owner`` in ``schema`` (a generator of one connection: ``for connection in ...``)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text(f"SET ROLE {owner}"))
            connection.execute(text(f"SET search_path = {schema}"))
            yield connection
    finally:
        engine.dispose()
