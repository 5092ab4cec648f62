"""Retrieval fixtures: the migrated `retrieval` schema, both vector stores, the local model."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc.aio
import pytest
from pinecone import Index
from sqlalchemy import text

from parapet.kit.database import Database
from parapet.kit.identity import Principal
from parapet.kit.migrations import migrate
from parapet.kit.testing import TestKeys, make_test_keys, running
from parapet.retrieval.v1 import document_pb2, retrieval_service_pb2_grpc
from parapet.retrieval.v1 import retrieval_service_pb2 as pb
from services.retrieval.app import APP
from services.retrieval.pinecone_emulator import PineconeEmulator
from services.retrieval.settings import RetrievalSettings
from services.retrieval.stores.pgvector import PgVectorStore
from services.retrieval.stores.pinecone_store import PineconeStore
from services.retrieval.stores.protocol import VectorStore

MIGRATIONS = Path(__file__).parents[3] / "services" / "retrieval" / "migrations"


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    await migrate(database_url, "retrieval", MIGRATIONS)
    db = Database(database_url, "retrieval", pool_size=2, max_overflow=2)
    try:
        yield db
    finally:
        await db.close()


@asynccontextmanager
async def refused_vector_writes(
    database: Database, tenant: str, statement: Literal["UPDATE", "DELETE"] = "UPDATE"
) -> AsyncIterator[None]:
    """A real failure of the pgvector store: PostgreSQL refuses every `statement` on this tenant's vectors."""
    name = f"refuse_{statement.lower()}_{tenant.replace('-', '_')}"
    async with database.transaction() as session:
        await session.execute(
            text(
                f"CREATE FUNCTION retrieval.{name}() RETURNS trigger LANGUAGE plpgsql"
                " AS $$ BEGIN RAISE EXCEPTION 'vector writes refused by the test'; END $$"
            )
        )
        await session.execute(
            text(
                f"CREATE TRIGGER {name} BEFORE {statement} ON retrieval.chunk_vectors FOR EACH ROW"
                f" WHEN (OLD.tenant_id = '{tenant}') EXECUTE FUNCTION retrieval.{name}()"
            )
        )
    try:
        yield
    finally:
        async with database.transaction() as session:
            await session.execute(text(f"DROP TRIGGER {name} ON retrieval.chunk_vectors"))
            await session.execute(text(f"DROP FUNCTION retrieval.{name}()"))


@pytest.fixture(scope="session")
def pinecone_emulator() -> Iterator[PineconeEmulator]:
    with PineconeEmulator(dimension=384) as emulator:
        yield emulator


@pytest.fixture(params=["pgvector", "pinecone"])
def store(
    request: pytest.FixtureRequest, database: Database, pinecone_emulator: PineconeEmulator
) -> VectorStore:
    if request.param == "pgvector":
        return PgVectorStore(database)
    return PineconeStore(Index(host=pinecone_emulator.host, api_key=pinecone_emulator.api_key))


@pytest.fixture(scope="module")
def keys() -> TestKeys:
    return make_test_keys()


def retrieval_settings(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str, **overrides: Any
) -> RetrievalSettings:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(keys.jwks()))
    values: dict[str, Any] = {
        "port": 0,
        "database_url": database_url,
        "nats_url": nats_url,
        "identity_jwks_file": jwks,
        "health_interval_seconds": 0.2,
        "health_probe_timeout_seconds": 0.5,
        "shutdown_grace_seconds": 1.0,
        "nats_reconnect_wait_seconds": 0.2,
        "retrieval_relay_interval_seconds": 0.2,
        "retrieval_max_document_bytes": 200_000,
        "retrieval_embedding_threads": 1,
    }
    values.update(overrides)
    return RetrievalSettings(**values)


@dataclass
class Client:
    """A stub to a running retrieval server and call metadata for any principal."""

    stub: retrieval_service_pb2_grpc.RetrievalServiceStub
    keys: TestKeys

    def as_(
        self,
        tenant: str,
        subject: str = "alice",
        *,
        groups: tuple[str, ...] = (),
        scopes: tuple[str, ...] = ("ingest", "documents.read", "documents.delete"),
        roles: tuple[str, ...] = (),
    ) -> tuple[tuple[str, str], ...]:
        principal = Principal(tenant_id=tenant, subject=subject, groups=groups, scopes=scopes, roles=roles)
        return self.keys.metadata(principal)

    async def ingest(
        self, metadata: Any, *documents: tuple[document_pb2.Document, bytes]
    ) -> pb.IngestDocumentsResponse:
        async def requests() -> AsyncIterator[pb.IngestDocumentsRequest]:
            for document, content in documents:
                yield pb.IngestDocumentsRequest(document=document, content=content)

        response: pb.IngestDocumentsResponse = await self.stub.IngestDocuments(requests(), metadata=metadata)
        return response

    async def query(self, metadata: Any, query: str, **kwargs: Any) -> list[Any]:
        response = await self.stub.Query(pb.QueryRequest(query=query, **kwargs), metadata=metadata)
        return list(response.chunks)


def new_tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def doc(
    document_id: str, mime: str = "text/plain", groups: tuple[str, ...] = (), **metadata: str
) -> document_pb2.Document:
    return document_pb2.Document(
        document_id=document_id,
        title=f"Title of {document_id}",
        source_uri=f"https://docs.example/{document_id}",
        mime_type=mime,
        access_groups=list(groups),
        metadata=metadata,
    )


@asynccontextmanager
async def served(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str, **overrides: Any
) -> AsyncIterator[Client]:
    """The retrieval service (``retrieval_settings`` with ``overrides``) on port 0, and a client of it."""
    settings = retrieval_settings(tmp_path, keys, database_url, nats_url, **overrides)
    async with (
        running(APP, settings) as (_server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield Client(retrieval_service_pb2_grpc.RetrievalServiceStub(channel), keys)


@pytest.fixture
async def client(tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str) -> AsyncIterator[Client]:
    async with served(tmp_path, keys, database_url, nats_url) as client:
        yield client
