"""Async jobs: the job rows (spec, submitter ids, state, counters, lease) and per-item results, under
row-level security.

Revision ID: 0002_jobs
Revises: 0001_gateway
"""

from alembic import op

revision = "0002_jobs"
down_revision = "0001_gateway"
branch_labels = None
depends_on = None

# Tenant-scoped statements run under this role (SET LOCAL ROLE): not the tables' owner, so row-level security
# applies (owners and superusers bypass it). Cluster-wide, hence created idempotently.
JOBS_ROLE = "parapet_gateway_jobs"
_TENANT = "tenant_id = current_setting('parapet.tenant_id', true)"
# The sweeper re-queues unfinished jobs of every tenant: the one path that sets this scope.
_SWEEP = "current_setting('parapet.scope', true) = 'jobs-sweep'"


def upgrade() -> None:
    op.execute(
        f"""
        DO $$ BEGIN
            CREATE ROLE {JOBS_ROLE} NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END $$;
        """
    )
    op.execute(f"GRANT {JOBS_ROLE} TO CURRENT_USER")
    op.execute(
        """
        CREATE TABLE jobs (
            tenant_id text NOT NULL,
            job_id uuid NOT NULL,
            idempotency_key text NOT NULL,
            -- SHA-256 of the submitter and the deterministic serialization of the spec and metadata: the same
            -- key with anything else is refused (IDEMPOTENCY_KEY_REUSED).
            spec_sha256 bytea NOT NULL,
            spec bytea NOT NULL,  -- parapet.gateway.v1.ChatBatch
            metadata jsonb NOT NULL DEFAULT '{}',
            -- Who submitted: the ids auth issued the principal under, never a credential. Workers obtain a fresh
            -- token for them from auth (IssueDelegatedToken), which re-checks the key.
            subject text NOT NULL,
            api_key_id text NOT NULL,
            state text NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
            total_items integer NOT NULL CHECK (total_items > 0),
            succeeded_items integer NOT NULL DEFAULT 0,
            failed_items integer NOT NULL DEFAULT 0,
            prompt_tokens bigint NOT NULL DEFAULT 0,
            completion_tokens bigint NOT NULL DEFAULT 0,
            cached_tokens bigint NOT NULL DEFAULT 0,
            usage_estimated boolean NOT NULL DEFAULT false,
            cost_micros bigint NOT NULL DEFAULT 0,
            currency_code text NOT NULL DEFAULT '',
            error bytea,  -- parapet.status.v1.Status of a failed job
            -- The lease of the worker running it; another worker takes over only once it has expired.
            worker text,
            lease_expire_time timestamptz,
            attempts integer NOT NULL DEFAULT 0,
            enqueue_time timestamptz,  -- when JetStream acknowledged its message; NULL = the sweeper will
            create_time timestamptz NOT NULL DEFAULT now(),
            start_time timestamptz,
            end_time timestamptz,
            PRIMARY KEY (tenant_id, job_id),
            UNIQUE (tenant_id, idempotency_key)
        );
        CREATE INDEX jobs_unfinished ON jobs (create_time) WHERE state IN ('queued', 'running');
        CREATE INDEX jobs_subject ON jobs (tenant_id, subject, create_time);

        -- One row per finished item, written once (the primary key): the checkpoint a resumed job skips.
        CREATE TABLE job_results (
            tenant_id text NOT NULL,
            job_id uuid NOT NULL,
            item_index integer NOT NULL CHECK (item_index >= 0),
            succeeded boolean NOT NULL,
            response bytea,  -- parapet.gateway.v1.ChatResponse
            error bytea,  -- parapet.status.v1.Status
            finish_time timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, job_id, item_index),
            FOREIGN KEY (tenant_id, job_id) REFERENCES jobs ON DELETE CASCADE
        );
        """
    )
    for table, condition in (("jobs", f"{_TENANT} OR {_SWEEP}"), ("job_results", _TENANT)):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY {table}_tenant ON {table} USING ({condition}) WITH CHECK ({condition})")
    op.execute(f"GRANT USAGE ON SCHEMA gateway TO {JOBS_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON jobs, job_results TO {JOBS_ROLE}")


def downgrade() -> None:
    op.execute("DROP TABLE job_results")
    op.execute("DROP TABLE jobs")
    op.execute(f"REVOKE USAGE ON SCHEMA gateway FROM {JOBS_ROLE}")
