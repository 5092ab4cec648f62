"""When each pgvector row was last written, so that vectors no chunk row references (garbage of a failed
deletion or of an ingestion that stopped between its two writes) can be swept once no ingestion can still be
about to reference them.

Revision ID: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # now() is stable, not volatile: PostgreSQL stores the default in the catalog and rewrites no row. Rows
    # written before the upgrade get the upgrade's time, so the first sweep waits one grace period for them.
    op.execute("ALTER TABLE retrieval.chunk_vectors ADD COLUMN write_time timestamptz NOT NULL DEFAULT now()")


def downgrade() -> None:
    op.execute("ALTER TABLE retrieval.chunk_vectors DROP COLUMN write_time")
