"""The service role may delete audit outbox rows once they are published (the relay prunes them).

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("GRANT DELETE ON audit_outbox TO parapet_auth_app")
    op.execute("CREATE INDEX audit_outbox_sent ON audit_outbox (sent_time) WHERE sent_time IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP INDEX audit_outbox_sent")
    op.execute("REVOKE DELETE ON audit_outbox FROM parapet_auth_app")
