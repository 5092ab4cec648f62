"""Jobs count their runs apart from their attempts.

``runs`` counts every claim of a job and never goes down: the n-th run gives its items request ids of their own
(``job-<id>-<index>-run<n>`` from the second run on), so an item run again is a new chat downstream, budget-checked
and billed, instead of a repeat of the first run's request, which metering and audit take for a retry of the
same call. ``attempts`` now counts only the runs that ended without the worker giving the job back (a crash, a
lost lease): a worker that gives it back on purpose (auth unreachable, shutting down, a database outage) takes
its attempt back, so outages and restarts no longer exhaust ``gateway_job_max_attempts``.

Until this revision every claim counted an attempt and used the same request ids, so ``runs`` starts at
``attempts`` for the jobs that may run again (finished ones never do): a job claimed before gives its next run
a request id never used. A replica of the earlier release, still claiming during the rollout, counts attempts
only; the claim's ``greatest(runs, attempts) + 1`` covers that.

Revision ID: 0005_job_runs
Revises: 0004_idempotency_user
"""

from alembic import op

revision = "0005_job_runs"
down_revision = "0004_idempotency_user"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The backfill spans tenants, which no policy lets the owner update since 0003_job_expiry (FORCE ROW LEVEL
    # SECURITY applies to it): the forcing is lifted for this one statement, inside the migration's transaction,
    # so no other session ever sees the table unforced.
    op.execute(
        """
        ALTER TABLE jobs ADD COLUMN runs integer NOT NULL DEFAULT 0;
        ALTER TABLE jobs NO FORCE ROW LEVEL SECURITY;
        UPDATE jobs SET runs = attempts WHERE attempts > 0 AND state IN ('queued', 'running');
        ALTER TABLE jobs FORCE ROW LEVEL SECURITY;
        """
    )


def downgrade() -> None:
    op.execute("ALTER TABLE jobs DROP COLUMN runs")
