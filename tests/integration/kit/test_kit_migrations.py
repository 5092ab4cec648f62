"""Alembic per service schema: applied once, idempotent, safe under concurrent starts, all-or-nothing."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from parapet.kit.migrations import SchemaAheadError, migrate

ENV = "from parapet.kit.migrations import run_env\n\nrun_env()\n"

FIRST = """
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table("widgets", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text))


def downgrade() -> None:
    op.drop_table("widgets")
"""

SECOND = """
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.execute("ALTER TABLE widgets ADD COLUMN colour text")


def downgrade() -> None:
    op.execute("ALTER TABLE widgets DROP COLUMN colour")
"""

BROKEN = """
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.execute("CREATE TABLE gadgets (id int)")
    op.execute("SELECT no_such_function()")


def downgrade() -> None:
    pass
"""


def migrations_dir(tmp_path: Path, *revisions: str) -> Path:
    root = tmp_path / "migrations"
    (root / "versions").mkdir(parents=True, exist_ok=True)
    (root / "env.py").write_text(ENV)
    for index, body in enumerate(revisions, start=1):
        (root / "versions" / f"{index:04d}_rev.py").write_text(body)
    return root


def conninfo(database_url: str) -> str:
    return database_url.replace("postgresql+psycopg://", "postgresql://")


def query(database_url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(conninfo(database_url)) as conn:
        return conn.execute(sql, params).fetchall()


def version(database_url: str, schema: str) -> list[tuple[object, ...]]:
    return query(database_url, f'SELECT version_num FROM "{schema}".alembic_version')


@pytest.fixture
def schema() -> str:
    return f"mig_{uuid.uuid4().hex[:10]}"


async def test_applies_into_the_schema_and_second_run_is_a_noop(
    database_url: str, schema: str, tmp_path: Path
) -> None:
    folder = migrations_dir(tmp_path, FIRST)
    await migrate(database_url, schema, folder)
    assert version(database_url, schema) == [("0001",)]
    tables = query(
        database_url, "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", schema
    )
    # All inside the service's own schema: the versions, the lineage of the release that migrated it, the tables.
    assert sorted(tables) == [("alembic_version",), ("parapet_revisions",), ("widgets",)]
    query(database_url, f"INSERT INTO \"{schema}\".widgets (name) VALUES ('kept') RETURNING id")

    await migrate(database_url, schema, folder)  # no-op: nothing re-created, data kept
    assert version(database_url, schema) == [("0001",)]
    assert query(database_url, f'SELECT name FROM "{schema}".widgets') == [("kept",)]

    migrations_dir(tmp_path, FIRST, SECOND)  # a new revision appears
    await migrate(database_url, schema, folder)
    assert version(database_url, schema) == [("0002",)]


async def test_a_release_behind_the_schema_starts_on_it_without_migrating(
    database_url: str, schema: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pod of the previous release (rescheduled during a rollout, or after a rollback) finds its schema at a
    revision it does not know. Alembic refused to start ("Can't locate revision"), so the pod crash-looped; it now
    starts on the schema as it is, with a warning, and the schema keeps the newer revision and its data."""
    await migrate(database_url, schema, migrations_dir(tmp_path / "new", FIRST, SECOND))
    query(
        database_url, f"INSERT INTO \"{schema}\".widgets (name, colour) VALUES ('kept', 'red') RETURNING id"
    )
    with caplog.at_level("WARNING", logger="parapet.kit.migrations"):
        await migrate(database_url, schema, migrations_dir(tmp_path / "old", FIRST))
    assert version(database_url, schema) == [("0002",)]
    assert query(database_url, f'SELECT name, colour FROM "{schema}".widgets') == [("kept", "red")]
    assert [r.getMessage() for r in caplog.records] == [
        "the schema was migrated by a newer release; starting on it without migrating"
    ]


OTHER_SECOND = """
from alembic import op

revision = "0002b"
down_revision = "0001"


def upgrade() -> None:
    op.execute("ALTER TABLE widgets ADD COLUMN size int")


def downgrade() -> None:
    op.execute("ALTER TABLE widgets DROP COLUMN size")
"""


async def test_a_schema_at_a_revision_from_elsewhere_is_refused(
    database_url: str, schema: str, tmp_path: Path
) -> None:
    """A revision this release does not know, put there by no release descending from it (another branch's
    migration applied to a shared database): starting on it would run code against a schema it was not written
    for, so the start fails as Alembic's did, naming the revision."""
    await migrate(database_url, schema, migrations_dir(tmp_path / "branch", FIRST, SECOND))
    with pytest.raises(SchemaAheadError, match="0002"):
        await migrate(database_url, schema, migrations_dir(tmp_path / "release", FIRST, OTHER_SECOND))
    assert version(database_url, schema) == [("0002",)]


async def test_concurrent_runs_do_not_fail(database_url: str, schema: str, tmp_path: Path) -> None:
    folder = migrations_dir(tmp_path, FIRST, SECOND)
    await asyncio.gather(*(migrate(database_url, schema, folder) for _ in range(4)))
    assert version(database_url, schema) == [("0002",)]


async def test_failed_migration_leaves_nothing_behind(database_url: str, schema: str, tmp_path: Path) -> None:
    await migrate(database_url, schema, migrations_dir(tmp_path, FIRST, SECOND))
    folder = migrations_dir(tmp_path, FIRST, SECOND, BROKEN)
    with pytest.raises(Exception, match="no_such_function"):
        await migrate(database_url, schema, folder)
    assert version(database_url, schema) == [("0002",)]
    assert query(database_url, "SELECT 1 FROM information_schema.tables WHERE table_name = 'gadgets'") == []


async def test_rejects_unsafe_schema_names(database_url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid schema name"):
        await migrate(database_url, 'x"; DROP SCHEMA public; --', migrations_dir(tmp_path, FIRST))


WITH_EXTENSION = """
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector WITH SCHEMA public")
    op.execute("SELECT pg_sleep(2)")  # the rest of a first migration (tables, indexes); wider than start jitter


def downgrade() -> None:
    pass
"""


async def test_two_services_creating_one_extension_start_together(database_url: str, tmp_path: Path) -> None:
    """Retrieval and inference both create pgvector in their first migration, each under its own schema's lock:
    started together on an empty database (``parapet up``, a fresh cluster), the second waited for the first's
    uncommitted extension and then failed on its unique key, and its service did not start."""
    name = f"fresh_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(conninfo(database_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = database_url.rsplit("/", 1)[0] + f"/{name}"
        folders = [migrations_dir(tmp_path / service, WITH_EXTENSION) for service in ("first", "second")]

        async def start(schema: str, folder: Path) -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; from parapet.kit.migrations import migrate_sync; "
                "migrate_sync(sys.argv[1], sys.argv[2], Path(sys.argv[3]))",
                url,
                schema,
                str(folder),
                stderr=asyncio.subprocess.PIPE,
            )

        # The second starts once the first is inside its migration (the extension created, not committed), so
        # the two overlap however loaded the machine is.
        starts = [await start("first_svc", folders[0])]
        for _ in range(600):
            sleeping = query(
                database_url,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query LIKE 'SELECT pg_sleep%%'",
                name,
            )
            if sleeping[0][0]:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the first migration never reached its pg_sleep")
        starts.append(await start("second_svc", folders[1]))
        for process in starts:
            _, stderr = await process.communicate()
            assert process.returncode == 0, stderr.decode()[-600:]
        assert version(url, "first_svc") == version(url, "second_svc") == [("0001",)]
        assert query(url, "SELECT extname FROM pg_extension WHERE extname = 'vector'") == [("vector",)]
    finally:
        with psycopg.connect(conninfo(database_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
