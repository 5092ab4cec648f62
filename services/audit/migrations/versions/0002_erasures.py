"""Erasure markers: when each user of a tenant was last erased, so that records still on their way are erased too.

Revision ID: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TENANT_ROLE = "parapet_audit_tenant"  # created by 0001
_TENANT = "tenant_id = current_setting('parapet.tenant_id', true)"


def upgrade() -> None:
    # Records wait in the AUDIT stream while the audit service or its database is down; one of a user created
    # before that user's Erase is stored without its bodies, as Erase would have left it (services/audit/store.py).
    op.execute(
        """
        CREATE TABLE audit.erasures (
            tenant_id text NOT NULL,
            user_id text NOT NULL,
            erase_time timestamptz NOT NULL,
            PRIMARY KEY (tenant_id, user_id)
        )
        """
    )
    op.execute("ALTER TABLE audit.erasures ENABLE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY tenant_isolation ON audit.erasures USING ({_TENANT}) WITH CHECK ({_TENANT})")
    # Erase writes (and moves forward) the marker; appends read it. Nothing deletes one.
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON audit.erasures TO {TENANT_ROLE}")


def downgrade() -> None:
    op.execute("DROP TABLE audit.erasures")
