"""Alembic migrations per service schema, applied at start; safe when replicas start together.

Each service has ``services/<name>/migrations/`` with ``versions/`` and a two-line ``env.py``::

    from parapet.kit.migrations import run_env
    run_env()  # or run_env(target_metadata=Base.metadata) for autogenerate

:func:`migrate` creates the schema if needed and upgrades it to head with the version table inside the
schema itself (so eight services keep eight independent histories in one database), all in one
transaction under a PostgreSQL advisory lock that every service's migrations share: a second replica, or
another service, starting at the same moment waits, then finds nothing left to do (or does its own).
PostgreSQL's transactional DDL makes a failed migration leave nothing behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

from parapet.kit.database import check_schema_name, engine_options

log = logging.getLogger(__name__)

VERSION_TABLE = "alembic_version"


def _config(migrations_dir: Path, schema: str, connection: Connection | None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    # Passed as attributes, not options: config options go through configparser interpolation, which
    # would mangle a '%' in a password.
    config.attributes["schema"] = schema
    config.attributes["connection"] = connection
    return config


# One lock for every service's migrations in the database, not one per schema: migrations also create what the
# schemas share (retrieval's and inference's both create pgvector in public), and two services doing that at once
# on an empty database collided (the second waited for the first's uncommitted extension, then failed on its
# unique key, and its service did not start). A migration that finds nothing to do holds it for milliseconds.
# It also keeps Alembic's module-level state (``op``, ``context``) to one migration at a time in a process.
_LOCK_KEY = "parapet.migrate"


def _lock_and_prepare(connection: Connection, schema: str) -> None:
    connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": _LOCK_KEY})
    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))


#: Every revision a release's migrations hold, recorded by each release that migrates the schema: an older release
#: finds its own head there when the schema was migrated past it by a release descending from it.
LINEAGE_TABLE = "parapet_revisions"


class SchemaAheadError(RuntimeError):
    """The schema is at a revision this release does not know, and no release descending from this one put it
    there: a revision from elsewhere (a branch's migration applied to a shared database, a file left out of the
    image). Starting on it would run code against a schema it was not written for."""


def _exists(connection: Connection, schema: str, table: str) -> bool:
    found = connection.execute(text("SELECT to_regclass(:t)"), {"t": f'"{schema}".{table}'}).scalar()
    return found is not None


def _newer_revisions(connection: Connection, schema: str, revisions: set[str]) -> list[str]:
    """The schema's current revisions that are not among this release's ``revisions``. Compared exactly:
    Alembic's own lookup also takes a revision's prefix ("0002" finds "0002b")."""
    if not _exists(connection, schema, VERSION_TABLE):
        return []
    current = connection.execute(text(f'SELECT version_num FROM "{schema}".{VERSION_TABLE}')).scalars().all()
    return [revision for revision in current if revision not in revisions]


def _descends_from_ours(connection: Connection, schema: str, heads: Sequence[str]) -> bool:
    """Whether a release whose migrations hold this release's ``heads`` migrated the schema (its lineage)."""
    if not heads or not _exists(connection, schema, LINEAGE_TABLE):
        return False
    recorded = connection.execute(
        text(f'SELECT count(*) FROM "{schema}".{LINEAGE_TABLE} WHERE revision = ANY(:heads)'),
        {"heads": list(heads)},
    ).scalar_one()
    return bool(recorded == len(heads))


def _record_lineage(connection: Connection, schema: str, revisions: set[str]) -> None:
    connection.execute(
        text(f'CREATE TABLE IF NOT EXISTS "{schema}".{LINEAGE_TABLE} (revision text PRIMARY KEY)')
    )
    connection.execute(
        text(
            f'INSERT INTO "{schema}".{LINEAGE_TABLE} (revision) SELECT unnest(CAST(:revisions AS text[]))'
            " ON CONFLICT DO NOTHING"
        ),
        {"revisions": sorted(revisions)},
    )


def migrate_sync(database_url: str, schema: str, migrations_dir: Path) -> None:
    """Create ``schema`` if missing and upgrade it to head (blocking; see :func:`migrate`).

    A schema a newer release has migrated (at a revision unknown here, by a release whose migrations hold this
    one's head: ``parapet_revisions``) is left as it is, with a warning, and the service starts on it: a pod of
    the previous release rescheduled during a rollout, or a rollback, would otherwise fail to start at all
    (Alembic cannot upgrade from a revision it does not know). Migrations are written so that the previous
    release runs on them; an upgrade note in docs/deploy.md says where one is not. A schema at an unknown
    revision that no descendant of this release put there is refused (:class:`SchemaAheadError`), as Alembic
    refused it before.
    """
    check_schema_name(schema)
    if not (migrations_dir / "env.py").exists():
        raise FileNotFoundError(f"{migrations_dir} has no env.py: not an Alembic migrations directory")
    # The same URL serves the sync engine: SQLAlchemy's psycopg dialect does both.
    engine = create_engine(database_url, poolclass=NullPool, **engine_options(schema))
    try:
        with engine.begin() as connection:
            _lock_and_prepare(connection, schema)
            config = _config(migrations_dir, schema, connection)
            scripts = ScriptDirectory.from_config(config)  # read once: every check below uses it
            revisions = {script.revision for script in scripts.walk_revisions()}
            newer = _newer_revisions(connection, schema, revisions)
            if newer and _descends_from_ours(connection, schema, scripts.get_heads()):
                log.warning(
                    "the schema was migrated by a newer release; starting on it without migrating",
                    extra={"schema": schema, "revisions": ",".join(newer)},
                )
                return
            if newer:
                raise SchemaAheadError(
                    f"schema {schema!r} is at revision {', '.join(newer)}, which this release's migrations do not "
                    "know, and no release descending from this one put it there (a migration from another "
                    "branch, or one missing from the image?)"
                )
            command.upgrade(config, "head")
            _record_lineage(connection, schema, revisions)
    finally:
        engine.dispose()
    log.info("migrations applied", extra={"schema": schema})


async def migrate(database_url: str, schema: str, migrations_dir: Path) -> None:
    """Create ``schema`` if missing and upgrade it to head, off the event loop (Alembic is synchronous)."""
    await asyncio.to_thread(migrate_sync, database_url, schema, migrations_dir)


def run_env(target_metadata: Any = None) -> None:
    """The whole of a service's Alembic ``env.py``.

    Run by :func:`migrate`, it reuses the locked connection it is given. Run by the ``alembic`` command
    line (to write a new revision), it connects to ``sqlalchemy.url`` from ``alembic.ini`` or the
    ``PARAPET_DATABASE_URL`` environment variable and takes the schema from ``parapet.schema`` in
    ``alembic.ini`` or the migrations folder's parent folder name (the service name).
    """
    import os

    from alembic import context

    config = context.config
    schema = check_schema_name(
        config.attributes.get("schema")
        or config.get_main_option("parapet.schema")
        or Path(config.get_main_option("script_location") or ".").resolve().parent.name
    )
    options: dict[str, Any] = {
        "target_metadata": target_metadata,
        "version_table_schema": schema,
        "include_schemas": False,
    }
    if context.is_offline_mode():
        context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True, **options)
        with context.begin_transaction():
            context.run_migrations()
        return

    connection: Connection | None = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, **options)
        with context.begin_transaction():
            context.run_migrations()
        return

    url = config.get_main_option("sqlalchemy.url") or os.environ.get("PARAPET_DATABASE_URL")
    if not url:
        raise RuntimeError("set sqlalchemy.url in alembic.ini or PARAPET_DATABASE_URL")
    engine = create_engine(url, poolclass=NullPool, **engine_options(schema))
    try:
        with engine.begin() as own:
            _lock_and_prepare(own, schema)
            context.configure(connection=own, **options)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()
