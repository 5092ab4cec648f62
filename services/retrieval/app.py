"""The retrieval service as the kit runs it (`parapet serve retrieval`).

Documents, chunks, embeddings and access groups of every tenant; RPCs in servicer.py. Two background
tasks: the outbox relay publishing DocumentsDeletedEvents, and the sweep of vectors no chunk row references.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import openai
from pinecone import Index

from parapet.embeddings import CachedEmbedder, Embedder
from parapet.embeddings.minilm import MiniLmEmbedder, MiniLmOptions, load_tokenizer
from parapet.embeddings.openai_embedder import OpenAIEmbedder
from parapet.events.documents import DOCUMENTS_STREAM
from parapet.kit import periodic
from parapet.kit.app import Resources, ServiceApp
from parapet.retrieval.v1 import retrieval_service_pb2_grpc
from services.retrieval.chunking import ChunkingOptions
from services.retrieval.deletion import Deleter
from services.retrieval.events import OutboxRelay
from services.retrieval.ingest import IngestOptions, Ingestor
from services.retrieval.orphans import OrphanSweeper, PineconeOrphanSweeper
from services.retrieval.search import Searcher
from services.retrieval.servicer import RetrievalServicer
from services.retrieval.settings import RetrievalSettings
from services.retrieval.stores.pgvector import PgVectorOptions, PgVectorStore
from services.retrieval.stores.pinecone_store import PineconeStore


def build_embedder(settings: RetrievalSettings) -> Embedder:
    if settings.retrieval_embedder == "openai":
        client = openai.AsyncOpenAI(
            api_key=settings.retrieval_openai_api_key, base_url=settings.retrieval_openai_base_url
        )
        inner: Embedder = OpenAIEmbedder(client, settings.retrieval_openai_model)
    else:
        inner = MiniLmEmbedder(MiniLmOptions(threads=settings.retrieval_embedding_threads))
    return CachedEmbedder(inner, settings.retrieval_embedding_cache_entries)


def build_store(
    settings: RetrievalSettings, resources: Resources[RetrievalSettings]
) -> PgVectorStore | PineconeStore:
    if settings.retrieval_vector_store == "pinecone":
        if not settings.retrieval_pinecone_host:
            raise ValueError("PARAPET_RETRIEVAL_PINECONE_HOST is required with the pinecone vector store")
        return PineconeStore(
            Index(host=settings.retrieval_pinecone_host, api_key=settings.retrieval_pinecone_api_key)
        )
    return PgVectorStore(
        resources.require_database(),
        PgVectorOptions(settings.retrieval_hnsw_ef_search, settings.retrieval_hnsw_max_scan_tuples),
    )


async def register(server: grpc.aio.Server, resources: Resources[RetrievalSettings]) -> None:
    settings = resources.settings
    database = resources.require_database()
    relay = OutboxRelay(database, resources.require_bus(), interval=settings.retrieval_relay_interval_seconds)
    store = build_store(settings, resources)
    embedder = build_embedder(settings)
    ingestor = Ingestor(
        database,
        store,
        embedder,
        load_tokenizer(truncate=False),
        relay,
        IngestOptions(
            max_document_bytes=settings.retrieval_max_document_bytes,
            chunking=ChunkingOptions(
                max_tokens=settings.retrieval_chunk_tokens,
                overlap_tokens=settings.retrieval_chunk_overlap_tokens,
            ),
        ),
    )
    servicer = RetrievalServicer(
        database, ingestor, Searcher(database, store, embedder), Deleter(database, store, relay)
    )
    retrieval_service_pb2_grpc.add_RetrievalServiceServicer_to_server(servicer, server)
    resources.spawn(relay.run(), name="documents-deleted-relay")
    grace = settings.retrieval_orphan_grace_seconds
    sweeper = (
        OrphanSweeper(store, grace_seconds=grace)
        if isinstance(store, PgVectorStore)
        else PineconeOrphanSweeper(store, database, grace_seconds=grace)
    )
    resources.spawn(
        periodic.every(settings.retrieval_orphan_sweep_seconds, sweeper.tick, "the orphan vector sweep"),
        name="orphan-vector-sweeper",
    )


APP = ServiceApp(
    name="retrieval",
    settings_type=RetrievalSettings,
    register=register,
    service_names=("parapet.retrieval.v1.RetrievalService",),
    uses_database=True,
    uses_nats=True,
    migrations=Path(__file__).parent / "migrations",
    streams=(DOCUMENTS_STREAM,),
    # A document whose text holds a NUL is rejected on its own (ingest.validate), as the contract says of
    # any bad document, instead of the kit ending the whole stream.
    nul_checked_by_servicer=frozenset(
        {
            "/parapet.retrieval.v1.RetrievalService/IngestDocuments",
            "/parapet.retrieval.v1.RetrievalService/StreamIngestDocuments",
        }
    ),
)
