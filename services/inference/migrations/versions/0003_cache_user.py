"""Semantic cache: each entry names the user whose question made it, so that erasing a user reaches it.

An entry holds its question and answer as text; shared within the tenant's access scope, it was out of reach
of a user's erasure until its TTL. Entries written before this revision keep an empty user_id (no request
recorded one) and expire within the cache TTL.

Revision ID: 0003_cache_user
Revises: 0002_cache_expiry
"""

from alembic import op

revision = "0003_cache_user"
down_revision = "0002_cache_expiry"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE cache_entries ADD COLUMN user_id text NOT NULL DEFAULT '';
        CREATE INDEX cache_entries_user ON cache_entries (tenant_id, user_id);
        """
    )


def downgrade() -> None:
    op.execute("DROP INDEX cache_entries_user")
    op.execute("ALTER TABLE cache_entries DROP COLUMN user_id")
