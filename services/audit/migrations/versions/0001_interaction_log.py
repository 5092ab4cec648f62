"""The interaction log: hash-chained records, per-tenant chain heads, signed checkpoints, row-level security.

Revision ID: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The role tenant-scoped statements run under (SET LOCAL ROLE): not the table owner, so row-level
# security applies to it (owners and superusers bypass RLS). Cluster-wide, hence created idempotently.
TENANT_ROLE = "parapet_audit_tenant"
_TENANT = "tenant_id = current_setting('parapet.tenant_id', true)"


def upgrade() -> None:
    op.execute(
        f"""
        DO $$ BEGIN
            CREATE ROLE {TENANT_ROLE} NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END $$;
        """
    )
    # The service's own login role must be able to SET ROLE to it (a no-op need for superusers).
    op.execute(f"GRANT {TENANT_ROLE} TO CURRENT_USER")
    op.execute(
        """
        CREATE TABLE audit.records (
            tenant_id text NOT NULL,
            sequence bigint NOT NULL CHECK (sequence > 0),
            record_id uuid NOT NULL,
            kind text NOT NULL CHECK (kind IN ('interaction', 'admin_action')),
            create_time timestamptz NOT NULL,
            ingest_time timestamptz NOT NULL DEFAULT now(),
            user_id text NOT NULL DEFAULT '',
            api_key_id text NOT NULL DEFAULT '',
            feature text NOT NULL DEFAULT '',
            requested_model text NOT NULL DEFAULT '',
            model text NOT NULL DEFAULT '',
            provider text NOT NULL DEFAULT '',
            prompt_template text NOT NULL DEFAULT '',
            prompt_template_version text NOT NULL DEFAULT '',
            prompt_tokens bigint NOT NULL DEFAULT 0,
            completion_tokens bigint NOT NULL DEFAULT 0,
            cached_tokens bigint NOT NULL DEFAULT 0,
            cost_micros bigint NOT NULL DEFAULT 0,
            currency_code text NOT NULL DEFAULT '',
            latency_us bigint NOT NULL DEFAULT 0,
            time_to_first_token_us bigint NOT NULL DEFAULT 0,
            cached boolean NOT NULL DEFAULT false,
            fallback_models text[] NOT NULL DEFAULT '{}',
            moderation_summary jsonb NOT NULL DEFAULT '{}',
            status_code integer NOT NULL DEFAULT 0,
            error_reason text NOT NULL DEFAULT '',
            request_id text NOT NULL DEFAULT '',
            trace_id text NOT NULL DEFAULT '',
            metadata bytea NOT NULL,
            previous_hash bytea NOT NULL CHECK (length(previous_hash) = 32),
            record_hash bytea NOT NULL CHECK (length(record_hash) = 32),
            prompt text,
            response text,
            body_expire_time timestamptz,
            erase_time timestamptz,
            PRIMARY KEY (tenant_id, sequence),
            UNIQUE (tenant_id, record_id)
        )
        """
    )
    # Per-tenant, per-day cost analysis and time-range queries (also the query order: create time, then
    # sequence); cost and token columns included so daily rollups are index-only scans.
    op.execute(
        """
        CREATE INDEX records_tenant_time ON audit.records (tenant_id, create_time, sequence)
            INCLUDE (model, cost_micros, prompt_tokens, completion_tokens)
        """
    )
    op.execute("CREATE INDEX records_tenant_user ON audit.records (tenant_id, user_id, create_time)")
    op.execute("CREATE INDEX records_tenant_request ON audit.records (tenant_id, request_id)")
    # The retention job's work list: only rows that still hold bodies.
    op.execute(
        """
        CREATE INDEX records_body_expiry ON audit.records (body_expire_time)
            WHERE erase_time IS NULL AND body_expire_time IS NOT NULL
        """
    )
    op.execute(
        """
        CREATE TABLE audit.chain_heads (
            tenant_id text PRIMARY KEY,
            sequence bigint NOT NULL DEFAULT 0,
            head_hash bytea NOT NULL DEFAULT '\\x0000000000000000000000000000000000000000000000000000000000000000',
            update_time timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE audit.checkpoints (
            tenant_id text NOT NULL,
            sequence bigint NOT NULL,
            head_hash bytea NOT NULL,
            create_time timestamptz NOT NULL,
            signature bytea NOT NULL,
            key_id text NOT NULL,
            PRIMARY KEY (tenant_id, sequence)
        )
        """
    )
    # Least privilege for the tenant role: no DELETE anywhere; on records only the body columns change
    # after insert (erasure), so the chained metadata cannot be rewritten through it.
    grants = {
        "records": "SELECT, INSERT, UPDATE (prompt, response, erase_time)",
        "chain_heads": "SELECT, INSERT, UPDATE",
        "checkpoints": "SELECT, INSERT",
    }
    for table, privileges in grants.items():
        op.execute(f"ALTER TABLE audit.{table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON audit.{table} USING ({_TENANT}) WITH CHECK ({_TENANT})"
        )
        op.execute(f"GRANT {privileges} ON audit.{table} TO {TENANT_ROLE}")
    op.execute(f"GRANT USAGE ON SCHEMA audit TO {TENANT_ROLE}")


def downgrade() -> None:
    for table in ("checkpoints", "chain_heads", "records"):
        op.execute(f"DROP TABLE audit.{table}")
    op.execute(f"REVOKE USAGE ON SCHEMA audit FROM {TENANT_ROLE}")
