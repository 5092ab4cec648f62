"""Metering: reservations, budget and rate counters, the immutable usage ledger and its outbox.

Revision ID: 0001_metering
Revises:
"""

from alembic import op

revision = "0001_metering"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE reservations (
            reservation_id uuid PRIMARY KEY,
            tenant_id text NOT NULL,
            request_id text NOT NULL,
            user_id text NOT NULL,
            api_key_id text NOT NULL DEFAULT '',
            state text NOT NULL CHECK (state IN ('active', 'settled', 'released', 'expired')),
            reserved_tokens bigint NOT NULL CHECK (reserved_tokens >= 0),
            reserved_micros bigint NOT NULL CHECK (reserved_micros >= 0),
            currency_code text NOT NULL,
            -- The counters this reservation holds spend on: [{budget_id, scope_key, unit, window_start, amount}].
            holds jsonb NOT NULL,
            create_time timestamptz NOT NULL,
            expire_time timestamptz NOT NULL,
            end_time timestamptz,
            release_reason text NOT NULL DEFAULT '',
            UNIQUE (tenant_id, request_id)
        );
        CREATE INDEX reservations_active_expiry ON reservations (expire_time) WHERE state = 'active';

        -- Spend of one budget x subject x window: used (settled) and reserved (held by active reservations).
        CREATE TABLE budget_counters (
            tenant_id text NOT NULL,
            budget_id text NOT NULL,
            scope_key text NOT NULL,
            unit text NOT NULL CHECK (unit IN ('tokens', 'micros')),
            window_start timestamptz NOT NULL,
            limit_value bigint NOT NULL,
            used bigint NOT NULL DEFAULT 0,
            reserved bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
            PRIMARY KEY (tenant_id, budget_id, scope_key, unit, window_start)
        );

        -- Requests and tokens of one subject in one UTC minute; the previous minute's row weights the
        -- sliding window. rpm/tpm/carry_* are the figures of the last reservation (read via EXCLUDED).
        CREATE TABLE rate_counters (
            tenant_id text NOT NULL,
            scope_key text NOT NULL,
            window_start timestamptz NOT NULL,
            requests bigint NOT NULL DEFAULT 0,
            tokens bigint NOT NULL DEFAULT 0,
            rpm bigint NOT NULL DEFAULT 0,
            tpm bigint NOT NULL DEFAULT 0,
            carry_requests bigint NOT NULL DEFAULT 0,
            carry_tokens bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (tenant_id, scope_key, window_start)
        );

        CREATE TABLE usage_ledger (
            event_id uuid PRIMARY KEY,
            tenant_id text NOT NULL,
            request_id text NOT NULL,
            reservation_id text NOT NULL DEFAULT '',
            user_id text NOT NULL,
            api_key_id text NOT NULL DEFAULT '',
            feature text NOT NULL DEFAULT '',
            model text NOT NULL DEFAULT '',
            requested_model text NOT NULL DEFAULT '',
            provider text NOT NULL DEFAULT '',
            prompt_tokens bigint NOT NULL CHECK (prompt_tokens >= 0),
            completion_tokens bigint NOT NULL CHECK (completion_tokens >= 0),
            cached_tokens bigint NOT NULL CHECK (cached_tokens >= 0),
            estimated boolean NOT NULL,
            cost_micros bigint NOT NULL,
            currency_code text NOT NULL,
            cached boolean NOT NULL,
            latency_micros bigint NOT NULL,
            labels jsonb NOT NULL DEFAULT '{}',
            occur_time timestamptz NOT NULL,
            create_time timestamptz NOT NULL DEFAULT now(),
            UNIQUE (tenant_id, request_id)
        );
        CREATE INDEX usage_ledger_tenant_time ON usage_ledger (tenant_id, occur_time);

        -- The ledger is append-only: a settled request is a fact, corrections are new rows (credits).
        CREATE FUNCTION usage_ledger_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'usage_ledger rows are immutable';
        END $$;
        CREATE TRIGGER usage_ledger_no_update BEFORE UPDATE OR DELETE ON usage_ledger
            FOR EACH ROW EXECUTE FUNCTION usage_ledger_immutable();

        -- Transactional outbox: written with the ledger row, published by the relay, marked on JetStream's ack.
        CREATE TABLE outbox (
            id bigserial PRIMARY KEY,
            event_id uuid NOT NULL UNIQUE,
            subject text NOT NULL,
            payload bytea NOT NULL,
            headers jsonb NOT NULL,
            create_time timestamptz NOT NULL DEFAULT now(),
            sent_time timestamptz
        );
        CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_time IS NULL;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE outbox;
        DROP TABLE usage_ledger;
        DROP FUNCTION usage_ledger_immutable();
        DROP TABLE rate_counters;
        DROP TABLE budget_counters;
        DROP TABLE reservations;
        """
    )
