"""Settings of the retrieval service: embedder, vector store, limits, chunking."""

from typing import Literal

from pydantic import Field

from parapet.kit.config import ServiceSettings


class RetrievalSettings(ServiceSettings):
    """Local MiniLM + pgvector by default: no keys, nothing downloaded."""

    retrieval_embedder: Literal["local", "openai"] = Field(
        "local",
        description="`local`: all-MiniLM-L6-v2 on onnxruntime (model shipped in PyPI packages). "
        "`openai`: the OpenAI embeddings API (or a compatible server) asked for 384 dimensions.",
    )
    retrieval_openai_base_url: str | None = Field(
        None, description="Base URL of an OpenAI-compatible embeddings API; unset = api.openai.com."
    )
    retrieval_openai_api_key: str | None = Field(
        None, description="API key for the OpenAI embedder (else the SDK reads `OPENAI_API_KEY`)."
    )
    retrieval_openai_model: str = Field("text-embedding-3-small", description="OpenAI embedding model.")
    retrieval_embedding_threads: int = Field(
        0, ge=0, description="onnxruntime threads for the local model; 0 = one per core."
    )
    retrieval_embedding_cache_entries: int = Field(
        50_000, ge=1, description="Distinct texts whose vectors are kept (identical text is embedded once)."
    )
    retrieval_vector_store: Literal["pgvector", "pinecone"] = Field(
        "pgvector", description="Where vectors live: pgvector in the service's schema, or a Pinecone index."
    )
    retrieval_pinecone_host: str | None = Field(
        None,
        description="Data-plane host of the Pinecone index (`https://<index>-<project>.svc.<env>.pinecone.io`).",
    )
    retrieval_pinecone_api_key: str | None = Field(None, description="Pinecone API key.")
    retrieval_hnsw_ef_search: int = Field(
        800,
        ge=1,
        le=1000,
        description="pgvector `hnsw.ef_search`: candidates per HNSW scan step (800: recall@10 0.96 with a 10% "
        "group filter over 500k chunks at p99 15 ms; 100: 0.93 at 11.5 ms, docs/benchmarks.md).",
    )
    retrieval_hnsw_max_scan_tuples: int = Field(
        100_000, ge=1, description="pgvector `hnsw.max_scan_tuples`: bound of a filtered (iterative) scan."
    )
    retrieval_max_document_bytes: int = Field(
        3 * 1024 * 1024,
        ge=1,
        le=3 * 1024 * 1024,
        description="Larger documents are rejected (DOCUMENT_TOO_LARGE).",
    )
    retrieval_chunk_tokens: int = Field(
        200,
        ge=16,
        le=254,
        description="Word pieces per chunk at most (the model reads 256 with [CLS]/[SEP]).",
    )
    retrieval_chunk_overlap_tokens: int = Field(40, ge=0, description="Word pieces repeated between chunks.")
    retrieval_orphan_sweep_seconds: float = Field(
        10.0,
        gt=0,
        description="How often the next 1,000 vectors (pgvector: in key order, the whole table in turn; Pinecone: "
        "one tenant's namespace after another) are checked for a chunk row; those without one, unwritten for the "
        "grace below, are deleted.",
    )
    retrieval_orphan_grace_seconds: float = Field(
        3600.0,
        ge=60,
        description="How long a vector without a chunk row is kept. An ingestion writes a "
        "document's vectors, then its chunk rows: it must finish within this, or its vectors could be swept.",
    )
    retrieval_relay_interval_seconds: float = Field(
        2.0, gt=0, description="How often the outbox relay retries unpublished DocumentsDeletedEvents."
    )
