"""Semantic cache: answers keyed by tenant, access scope and partition, matched by question embedding.

Revision ID: 0001_semantic_cache
Revises:
"""

from alembic import op

revision = "0001_semantic_cache"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # pgvector may already be installed (the embedded server and retrieval create it); it lives in public.
    op.execute("CREATE EXTENSION IF NOT EXISTS vector SCHEMA public")
    op.execute(
        """
        CREATE TABLE cache_entries (
            entry_id uuid PRIMARY KEY,
            tenant_id text NOT NULL,
            -- SHA-256 of the caller's sorted document groups: an answer is served only to the same scope.
            scope_key text NOT NULL,
            -- SHA-256 of route, template name and version, generation parameters and earlier turns.
            partition_key text NOT NULL,
            -- SHA-256 of the normalised question: the exact-match fast path, no embedding needed.
            question_hash text NOT NULL,
            question text NOT NULL,
            embedding public.vector(384) NOT NULL,
            embedding_model text NOT NULL,
            answer text NOT NULL,
            finish_reason integer NOT NULL,
            model text NOT NULL,
            provider text NOT NULL,
            -- Documents the answer was grounded in; a documents-deleted event drops the entry.
            document_ids text[] NOT NULL DEFAULT '{}',
            create_time timestamptz NOT NULL DEFAULT now(),
            expire_time timestamptz NOT NULL
        );
        CREATE INDEX cache_entries_exact ON cache_entries (tenant_id, scope_key, partition_key, question_hash);
        CREATE INDEX cache_entries_documents ON cache_entries USING gin (document_ids);
        CREATE INDEX cache_entries_expiry ON cache_entries (tenant_id, expire_time);
        CREATE INDEX cache_entries_embedding ON cache_entries USING hnsw (embedding public.vector_cosine_ops);

        ALTER TABLE cache_entries ENABLE ROW LEVEL SECURITY;
        ALTER TABLE cache_entries FORCE ROW LEVEL SECURITY;
        CREATE POLICY cache_entries_tenant ON cache_entries
            USING (tenant_id = current_setting('parapet.tenant_id', true))
            WITH CHECK (tenant_id = current_setting('parapet.tenant_id', true));
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS cache_entries")
