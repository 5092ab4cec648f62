"""Idempotency records are each user's own: keyed by (tenant, user, key), and erasable by user.

Keyed by tenant and key alone, a record's answer was replayed to any caller of the tenant who sent the same
request with the same key, whatever documents that caller may read, and two users who chose the same key
refused each other's chats. The user now joins the key. A record stored before this revision has no user and
no caller's retry matches it any more: a retry of a chat answered before the upgrade runs again (the records
live 24 hours; docs/deploy.md).

Revision ID: 0004_idempotency_user
Revises: 0003_job_expiry
"""

from alembic import op

revision = "0004_idempotency_user"
down_revision = "0003_job_expiry"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE idempotency ADD COLUMN user_id text NOT NULL DEFAULT '';
        ALTER TABLE idempotency DROP CONSTRAINT idempotency_pkey;
        ALTER TABLE idempotency ADD PRIMARY KEY (tenant_id, user_id, idempotency_key);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DELETE FROM idempotency a USING idempotency b
            WHERE a.tenant_id = b.tenant_id AND a.idempotency_key = b.idempotency_key
              AND a.user_id > b.user_id;
        ALTER TABLE idempotency DROP CONSTRAINT idempotency_pkey;
        ALTER TABLE idempotency ADD PRIMARY KEY (tenant_id, idempotency_key);
        ALTER TABLE idempotency DROP COLUMN user_id;
        """
    )
