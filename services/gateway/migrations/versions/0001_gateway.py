"""Gateway: idempotency records of chat requests, and the outbox of audit records and settlements that could
not be delivered at once.

Revision ID: 0001_gateway
Revises:
"""

from alembic import op

revision = "0001_gateway"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE idempotency (
            tenant_id text NOT NULL,
            idempotency_key text NOT NULL,
            -- SHA-256 of the deterministic serialization of the request: the same key with another request
            -- is refused (IDEMPOTENCY_KEY_REUSED) instead of replaying an answer to a different question.
            request_sha256 bytea NOT NULL,
            request_id text NOT NULL,
            state text NOT NULL CHECK (state IN ('running', 'done')),
            -- The answer's StreamChatResponse messages, each prefixed by its 4-byte big-endian length.
            events bytea,
            create_time timestamptz NOT NULL DEFAULT now(),
            -- A 'running' row whose process died is taken over after this (the flow's own deadline).
            lease_expire_time timestamptz NOT NULL,
            expire_time timestamptz NOT NULL,
            PRIMARY KEY (tenant_id, idempotency_key)
        );
        CREATE INDEX idempotency_expire ON idempotency (expire_time);

        CREATE TABLE outbox (
            outbox_id uuid PRIMARY KEY,
            kind text NOT NULL CHECK (kind IN ('audit', 'settlement')),
            tenant_id text NOT NULL,
            -- Serialized AuditRecord, or SettleRequest.
            payload bytea NOT NULL,
            -- For settlements: the caller's internal token, to settle as that caller; refreshed from the
            -- identity cache when it has expired. Empty for audit records (published to NATS, no token).
            token text NOT NULL DEFAULT '',
            subject text NOT NULL DEFAULT '',
            api_key_id text NOT NULL DEFAULT '',
            attempts integer NOT NULL DEFAULT 0,
            create_time timestamptz NOT NULL DEFAULT now(),
            next_attempt_time timestamptz NOT NULL DEFAULT now(),
            sent_time timestamptz
        );
        CREATE INDEX outbox_pending ON outbox (next_attempt_time) WHERE sent_time IS NULL;
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE outbox; DROP TABLE idempotency;")
