"""Billing: per-tenant rollups (day x model x provider x feature) and the processed event ids.

Revision ID: 0001_billing
Revises:
"""

from alembic import op

revision = "0001_billing"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- One row per applied UsageEvent, written in the rollup update's transaction: the idempotency key.
        CREATE TABLE processed_events (
            event_id uuid PRIMARY KEY,
            tenant_id text NOT NULL,
            process_time timestamptz NOT NULL DEFAULT now()
        );

        CREATE TABLE rollups (
            tenant_id text NOT NULL,
            day date NOT NULL,
            model text NOT NULL,
            provider text NOT NULL,
            feature text NOT NULL,
            currency_code text NOT NULL,
            request_count bigint NOT NULL,
            prompt_tokens bigint NOT NULL,
            completion_tokens bigint NOT NULL,
            cached_tokens bigint NOT NULL,
            cost_micros bigint NOT NULL,
            estimated_request_count bigint NOT NULL,
            cached_request_count bigint NOT NULL,
            last_occur_time timestamptz NOT NULL,
            update_time timestamptz NOT NULL,
            PRIMARY KEY (tenant_id, day, model, feature, provider, currency_code)
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE rollups; DROP TABLE processed_events;")
