"""The job-expiry migration on a database whose tables' owner is no superuser, as in production: FORCE ROW LEVEL
SECURITY applies to it, so a migration that forgets a scope silently changes no row (the suite's embedded
PostgreSQL connects as a superuser, which policies exempt, and would not show it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Connection, text

from parapet.kit.migrations import _config
from tests.integration.owned_schema import as_owner, owned_schema

MIGRATIONS = Path(__file__).parents[3] / "services" / "gateway" / "migrations"
JOB = "11111111-1111-4111-8111-111111111111"


@pytest.fixture
def owner_database(database_url: str) -> Iterator[tuple[str, str]]:
    with owned_schema(database_url, "gateway", "parapet_gateway_jobs") as owned:
        yield owned


def _as_owner(url: str, owner: str) -> Iterator[Connection]:
    return as_owner(url, owner, "gateway")


def test_jobs_finished_before_it_expire_and_the_sweep_scope_can_only_read_and_expire(
    owner_database: tuple[str, str],
) -> None:
    url, owner = owner_database
    for connection in _as_owner(url, owner):
        command.upgrade(_config(MIGRATIONS, "gateway", connection), "0002_jobs")
        connection.execute(text("SELECT set_config('parapet.tenant_id', 'acme', true)"))
        connection.execute(
            text(
                "INSERT INTO jobs (tenant_id, job_id, idempotency_key, spec_sha256, spec, subject, api_key_id,"
                " state, total_items, end_time) VALUES ('acme', :j, 'k', '\\x00', '\\x00', 'alice', 'key',"
                " 'succeeded', 1, now() - interval '40 days')"
            ),
            {"j": JOB},
        )
    for connection in _as_owner(url, owner):
        command.upgrade(_config(MIGRATIONS, "gateway", connection), "head")
    for connection in _as_owner(url, owner):
        connection.execute(text("SELECT set_config('parapet.tenant_id', 'acme', true)"))
        left = connection.execute(text("SELECT expire_time - end_time FROM jobs")).scalar_one()
        assert left is not None and left.days == 30  # backfilled, though the owner is subject to the policies
    for connection in _as_owner(url, owner):
        connection.execute(text("SELECT set_config('parapet.scope', 'jobs-sweep', true)"))
        assert connection.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 1  # it reads ids
        changed = connection.execute(text("UPDATE jobs SET state = 'failed'"))
        assert changed.rowcount == 0  # but changes nothing
        deleted = connection.execute(text("DELETE FROM jobs WHERE expire_time <= now()"))
        assert deleted.rowcount == 1  # and deletes what expired (this job ended 40 days ago)


def test_jobs_claimed_before_the_runs_count_start_it_at_their_attempts(
    owner_database: tuple[str, str],
) -> None:
    """``0005_job_runs`` as a tables' owner that is no superuser: ``runs`` of every tenant's jobs starts at their
    attempts (each claim so far counted one and used the first run's request ids), so a job's next run gets
    request ids never used; the table is left FORCE ROW LEVEL SECURITY."""
    url, owner = owner_database
    claimed = "22222222-2222-4222-8222-222222222222"
    for connection in _as_owner(url, owner):
        command.upgrade(_config(MIGRATIONS, "gateway", connection), "0004_idempotency_user")
        for tenant, job, attempts in (("acme", JOB, 0), ("globex", claimed, 3)):
            connection.execute(text("SELECT set_config('parapet.tenant_id', :t, true)"), {"t": tenant})
            connection.execute(
                text(
                    "INSERT INTO jobs (tenant_id, job_id, idempotency_key, spec_sha256, spec, subject,"
                    " api_key_id, state, total_items, attempts) VALUES (:t, :j, 'k', '\\x00', '\\x00', 'alice',"
                    " 'key', 'running', 1, :a)"
                ),
                {"t": tenant, "j": job, "a": attempts},
            )
    for connection in _as_owner(url, owner):
        command.upgrade(_config(MIGRATIONS, "gateway", connection), "head")
    for connection in _as_owner(url, owner):
        forced = connection.execute(
            text("SELECT relforcerowsecurity FROM pg_class WHERE oid = 'jobs'::regclass")
        )
        assert forced.scalar_one() is True
        assert connection.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 0  # policies still apply
        connection.execute(text("SELECT set_config('parapet.scope', 'jobs-sweep', true)"))
        runs = connection.execute(text("SELECT job_id::text, runs, attempts FROM jobs ORDER BY job_id"))
        assert [tuple(row) for row in runs] == [(JOB, 0, 0), (claimed, 3, 3)]
