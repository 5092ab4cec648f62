"""Semantic cache: tombstones of deleted documents, so an answer grounded in one is not stored after the deletion.

An answer is written after its summary went out, well after its context was read. A documents-deleted event
handled in between found nothing to drop, and the entry, inserted afterwards with the deleted document's id,
was served for the whole TTL. The deletion consumer now also records each deleted document with the time it
learned of the deletion (``document_id`` '' stands for a tenant erasure: every document). An entry is not
stored, nor served, when one of its documents has a tombstone newer than its ``context_time`` (the earliest its
context can have been read). A tombstone is kept for the cache TTL and a margin, then the expiry sweep deletes
it.

Entries written before this revision get ``context_time`` = -infinity: any later tombstone of their documents
hides them, as the consumer deletes them anyway.

Revision ID: 0004_document_tombstones
Revises: 0003_cache_user
"""

from alembic import op

revision = "0004_document_tombstones"
down_revision = "0003_cache_user"
branch_labels = None
depends_on = None


_EXPIRED = "current_setting('parapet.scope', true) = 'cache-expiry' AND expire_time <= now()"


def upgrade() -> None:
    op.execute(
        f"""
        -- A constant default: replicas of the earlier release still insert (their entries count as read at the
        -- beginning of time, the safe side).
        ALTER TABLE cache_entries ADD COLUMN context_time timestamptz NOT NULL DEFAULT '-infinity';

        CREATE TABLE document_tombstones (
            tenant_id text NOT NULL,
            -- The deleted document; '' for a tenant erasure (no context chunk has an empty document id).
            document_id text NOT NULL,
            -- When the deletion reached the cache: never before the deletion itself, whatever the clocks say.
            delete_time timestamptz NOT NULL,
            expire_time timestamptz NOT NULL,
            PRIMARY KEY (tenant_id, document_id)
        );
        CREATE INDEX document_tombstones_expire_time ON document_tombstones (expire_time);

        ALTER TABLE document_tombstones ENABLE ROW LEVEL SECURITY;
        ALTER TABLE document_tombstones FORCE ROW LEVEL SECURITY;
        CREATE POLICY document_tombstones_tenant ON document_tombstones
            USING (tenant_id = current_setting('parapet.tenant_id', true))
            WITH CHECK (tenant_id = current_setting('parapet.tenant_id', true));
        -- The expiry sweep (0002) deletes expired tombstones of every tenant, and nothing else.
        CREATE POLICY document_tombstones_expiry ON document_tombstones FOR DELETE USING ({_EXPIRED});
        CREATE POLICY document_tombstones_expiry_read ON document_tombstones FOR SELECT USING ({_EXPIRED});
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE document_tombstones")
    op.execute("ALTER TABLE cache_entries DROP COLUMN context_time")
