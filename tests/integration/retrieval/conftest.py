"""Retrieval fixtures: the migrated `retrieval` schema, both vector stores, the local model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pinecone import Index

from parapet.embeddings.minilm import MiniLmEmbedder
from parapet.kit.database import Database
from parapet.kit.migrations import migrate
from services.retrieval.pinecone_emulator import PineconeEmulator
from services.retrieval.stores.pgvector import PgVectorStore
from services.retrieval.stores.pinecone_store import PineconeStore
from services.retrieval.stores.protocol import VectorStore

MIGRATIONS = Path(__file__).parents[3] / "services" / "retrieval" / "migrations"


@pytest.fixture(scope="session")
def minilm() -> MiniLmEmbedder:
    return MiniLmEmbedder()


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    await migrate(database_url, "retrieval", MIGRATIONS)
    db = Database(database_url, "retrieval", pool_size=2, max_overflow=2)
    try:
        yield db
    finally:
        await db.close()


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
