"""Job retention: when a finished job (its spec and results, which hold prompts and answers) is deleted; the
sweep scope narrowed to what the sweeper does; the indexes ListJobs pages by.

Revision ID: 0003_job_expiry
Revises: 0002_jobs
"""

from alembic import op

revision = "0003_job_expiry"
down_revision = "0002_jobs"
branch_labels = None
depends_on = None

JOBS_ROLE = "parapet_gateway_jobs"
_TENANT = "tenant_id = current_setting('parapet.tenant_id', true)"
_SWEEP = "current_setting('parapet.scope', true) = 'jobs-sweep'"
# Jobs that finished before this revision get the setting's default retention (30 days): a deployment that
# set gateway_job_retention_days otherwise sees its older jobs expire on the default (docs/deploy.md).
_DEFAULT_RETENTION = "interval '30 days'"


def upgrade() -> None:
    # The backfill runs under FORCE ROW LEVEL SECURITY like everything else: as the tables' owner it sees no row
    # unless a policy lets it, so it takes the sweep scope (whose policy, until replaced below, covers updates).
    op.execute(
        f"""
        SELECT set_config('parapet.scope', 'jobs-sweep', true);
        ALTER TABLE jobs ADD COLUMN expire_time timestamptz;
        UPDATE jobs SET expire_time = end_time + {_DEFAULT_RETENTION} WHERE end_time IS NOT NULL;
        CREATE INDEX jobs_expiry ON jobs (expire_time) WHERE expire_time IS NOT NULL;
        CREATE INDEX jobs_created ON jobs (tenant_id, create_time, job_id);
        DROP INDEX jobs_subject;
        CREATE INDEX jobs_subject ON jobs (tenant_id, subject, create_time, job_id);
        SELECT set_config('parapet.scope', '', true);
        """
    )
    # The sweeper reads ids of every tenant and deletes expired jobs; it changes nothing else, so its scope no
    # longer may (it could update or delete any job of any tenant before).
    op.execute(
        f"""
        DROP POLICY jobs_tenant ON jobs;
        CREATE POLICY jobs_tenant ON jobs USING ({_TENANT}) WITH CHECK ({_TENANT});
        CREATE POLICY jobs_sweep_read ON jobs FOR SELECT USING ({_SWEEP});
        CREATE POLICY jobs_sweep_expire ON jobs FOR DELETE USING ({_SWEEP} AND expire_time <= now());
        """
    )
    # DeleteJob and the expiry delete jobs; their results go by the foreign key's cascade, which PostgreSQL runs
    # as the tables' owner, so job_results needs no grant.
    op.execute(f"GRANT DELETE ON jobs TO {JOBS_ROLE}")


def downgrade() -> None:
    op.execute(f"REVOKE DELETE ON jobs FROM {JOBS_ROLE}")
    op.execute(
        f"""
        DROP POLICY jobs_sweep_expire ON jobs;
        DROP POLICY jobs_sweep_read ON jobs;
        DROP POLICY jobs_tenant ON jobs;
        CREATE POLICY jobs_tenant ON jobs USING ({_TENANT} OR {_SWEEP}) WITH CHECK ({_TENANT} OR {_SWEEP});
        DROP INDEX jobs_subject;
        CREATE INDEX jobs_subject ON jobs (tenant_id, subject, create_time);
        DROP INDEX jobs_created;
        DROP INDEX jobs_expiry;
        ALTER TABLE jobs DROP COLUMN expire_time;
        """
    )
