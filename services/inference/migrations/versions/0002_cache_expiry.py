"""Semantic cache: the expiry sweep may delete expired entries of every tenant, and nothing else.

Expired entries were deleted only in their tenant's next write, so a tenant that stopped asking kept its
cached questions and answers for ever. This policy lets one transaction scoped ``parapet.scope =
'cache-expiry'`` delete across tenants, and only rows already past ``expire_time``: it reads nothing and
touches no live entry (policies are permissive, so the tenant policy still governs everything else).

Revision ID: 0002_cache_expiry
Revises: 0001_semantic_cache
"""

from alembic import op

revision = "0002_cache_expiry"
down_revision = "0001_semantic_cache"
branch_labels = None
depends_on = None


_EXPIRED = "current_setting('parapet.scope', true) = 'cache-expiry' AND expire_time <= now()"


def upgrade() -> None:
    op.execute(
        f"""
        CREATE POLICY cache_entries_expiry ON cache_entries FOR DELETE USING ({_EXPIRED});
        -- A DELETE whose WHERE reads columns needs read access to the rows too (PostgreSQL applies the SELECT
        -- policies then): to the same expired rows only.
        CREATE POLICY cache_entries_expiry_read ON cache_entries FOR SELECT USING ({_EXPIRED});
        CREATE INDEX cache_entries_expire_time ON cache_entries (expire_time);
        """
    )


def downgrade() -> None:
    op.execute("DROP INDEX cache_entries_expire_time")
    op.execute("DROP POLICY cache_entries_expiry_read ON cache_entries")
    op.execute("DROP POLICY cache_entries_expiry ON cache_entries")
