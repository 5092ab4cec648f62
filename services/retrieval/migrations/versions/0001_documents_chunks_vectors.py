"""Documents, chunks (with full-text vectors), pgvector embeddings, the event outbox; row-level security by tenant.

Revision ID: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Tenant-scoped statements run under this role (SET LOCAL ROLE, see services/retrieval/scope.py): it owns
# nothing, so row-level security applies to it (table owners and superusers bypass RLS).
TENANT_ROLE = "parapet_retrieval_tenant"
_TENANT = "tenant_id = current_setting('parapet.tenant_id', true)"
_TABLES = ("documents", "chunks", "chunk_vectors", "outbox")


def upgrade() -> None:
    op.execute(
        f"""
        DO $$ BEGIN
            CREATE ROLE {TENANT_ROLE} NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END $$;
        """
    )
    op.execute(f"GRANT {TENANT_ROLE} TO CURRENT_USER")
    op.execute("CREATE EXTENSION IF NOT EXISTS vector WITH SCHEMA public")
    op.execute(
        """
        CREATE TABLE retrieval.documents (
            tenant_id text NOT NULL,
            document_id text NOT NULL,
            title text NOT NULL DEFAULT '',
            source_uri text NOT NULL DEFAULT '',
            mime_type text NOT NULL,
            metadata jsonb NOT NULL DEFAULT '{}',
            access_groups text[] NOT NULL DEFAULT '{}',
            owner_user_id text NOT NULL DEFAULT '',
            content_sha256 text NOT NULL,
            size_bytes bigint NOT NULL,
            chunk_count integer NOT NULL,
            create_time timestamptz NOT NULL DEFAULT now(),
            update_time timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, document_id)
        )
        """
    )
    op.execute("CREATE INDEX documents_owner ON retrieval.documents (tenant_id, owner_user_id)")
    # Chunks are the source of truth for what a query may return: a vector whose chunk row is gone (or not
    # yet committed) is never returned. access_groups and metadata are copied from the document so the
    # full-text query filters inside the index scan, not after it.
    op.execute(
        """
        CREATE TABLE retrieval.chunks (
            tenant_id text NOT NULL,
            chunk_id text NOT NULL,
            document_id text NOT NULL,
            ordinal integer NOT NULL,
            text text NOT NULL,
            start_offset bigint NOT NULL,
            end_offset bigint NOT NULL,
            access_groups text[] NOT NULL,
            metadata jsonb NOT NULL,
            tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
            PRIMARY KEY (tenant_id, chunk_id),
            FOREIGN KEY (tenant_id, document_id) REFERENCES retrieval.documents ON DELETE CASCADE
        )
        """
    )
    op.execute("CREATE INDEX chunks_document ON retrieval.chunks (tenant_id, document_id, ordinal)")
    op.execute("CREATE INDEX chunks_tsv ON retrieval.chunks USING gin (tsv)")
    # The pgvector store's table (services/retrieval/stores/pgvector.py). access_groups carries '*' for a
    # document readable by every user, so the group filter is one array overlap inside the HNSW scan.
    op.execute(
        """
        CREATE TABLE retrieval.chunk_vectors (
            tenant_id text NOT NULL,
            chunk_id text NOT NULL,
            document_id text NOT NULL,
            embedding public.vector(384) NOT NULL,
            access_groups text[] NOT NULL,
            metadata jsonb NOT NULL DEFAULT '{}',
            PRIMARY KEY (tenant_id, chunk_id)
        )
        """
    )
    op.execute("CREATE INDEX chunk_vectors_document ON retrieval.chunk_vectors (tenant_id, document_id)")
    op.execute(
        "CREATE INDEX chunk_vectors_hnsw ON retrieval.chunk_vectors USING hnsw (embedding public.vector_cosine_ops)"
        " WITH (m = 16, ef_construction = 64)"
    )
    # Transactional outbox: a deletion and its DocumentsDeletedEvent commit together; the relay publishes.
    op.execute(
        """
        CREATE TABLE retrieval.outbox (
            event_id uuid PRIMARY KEY,
            tenant_id text NOT NULL,
            subject text NOT NULL,
            ce_type text NOT NULL,
            payload bytea NOT NULL,
            create_time timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(f"GRANT USAGE ON SCHEMA retrieval TO {TENANT_ROLE}")
    for table in _TABLES:
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON retrieval.{table} TO {TENANT_ROLE}")
        op.execute(f"ALTER TABLE retrieval.{table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY {table}_tenant ON retrieval.{table} TO {TENANT_ROLE} USING ({_TENANT}) WITH CHECK ({_TENANT})"
        )


def downgrade() -> None:
    for table in reversed(_TABLES):
        op.execute(f"DROP TABLE retrieval.{table}")
