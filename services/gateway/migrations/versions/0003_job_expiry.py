"""Job retention: when a finished job (its spec and results, which hold prompts and answers) is deleted, and
the grants that let DeleteJob and the sweeper delete it; the index ListJobs reads a tenant's jobs by.

Revision ID: 0003_job_expiry
Revises: 0002_jobs
"""

from alembic import op

revision = "0003_job_expiry"
down_revision = "0002_jobs"
branch_labels = None
depends_on = None

JOBS_ROLE = "parapet_gateway_jobs"
# Jobs that finished before this revision get the default retention (the setting's default, 30 days).
_DEFAULT_RETENTION = "interval '30 days'"


def upgrade() -> None:
    op.execute(
        f"""
        ALTER TABLE jobs ADD COLUMN expire_time timestamptz;
        UPDATE jobs SET expire_time = end_time + {_DEFAULT_RETENTION} WHERE end_time IS NOT NULL;
        CREATE INDEX jobs_expiry ON jobs (expire_time) WHERE expire_time IS NOT NULL;
        CREATE INDEX jobs_created ON jobs (tenant_id, create_time);
        """
    )
    op.execute(f"GRANT DELETE ON jobs, job_results TO {JOBS_ROLE}")


def downgrade() -> None:
    op.execute(f"REVOKE DELETE ON jobs, job_results FROM {JOBS_ROLE}")
    op.execute("DROP INDEX jobs_created")
    op.execute("DROP INDEX jobs_expiry")
    op.execute("ALTER TABLE jobs DROP COLUMN expire_time")
