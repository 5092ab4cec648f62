"""When the token behind each recorded OIDC subject's roles was issued.

A subject's recorded roles (0003) were whatever its last cold sign-in asserted: a token issued before a
promotion, still valid and presented after it, wrote the lesser roles back, and a lesser admin could then act on
the promoted admin again. The record now keeps the token's ``iat`` and only a token issued no earlier replaces it.
Rows recorded before this revision start at -infinity, so the next sign-in of any token replaces them.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE oidc_subjects ADD COLUMN issued_time timestamptz NOT NULL DEFAULT '-infinity'")


def downgrade() -> None:
    op.execute("ALTER TABLE oidc_subjects DROP COLUMN issued_time")
