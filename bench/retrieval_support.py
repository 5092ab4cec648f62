"""Shared setup of the retrieval benchmarks: embedded PostgreSQL + NATS and a running retrieval service."""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc.aio

from parapet.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from parapet.kit.identity import Principal
from parapet.kit.testing import TestKeys, make_test_keys, running
from parapet.retrieval.v1 import document_pb2, retrieval_service_pb2_grpc
from parapet.retrieval.v1 import retrieval_service_pb2 as pb
from services.retrieval.app import APP
from services.retrieval.settings import RetrievalSettings

PG_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "2GB",
    "maintenance_work_mem": "3GB",
    "max_parallel_maintenance_workers": "1",
    "work_mem": "64MB",
}


@dataclass
class Service:
    stub: retrieval_service_pb2_grpc.RetrievalServiceStub
    keys: TestKeys
    database_url: str

    def caller(self, tenant: str, groups: Sequence[str] = ()) -> tuple[tuple[str, str], ...]:
        principal = Principal(
            tenant_id=tenant, subject="bench", groups=tuple(groups), scopes=("ingest", "documents.read")
        )
        return self.keys.metadata(principal)

    async def ingest(
        self, tenant: str, documents: Sequence[tuple[str, str, str]], batch: int = 50
    ) -> list[pb.DocumentResult]:
        """(document id, title, text) documents, `batch` per IngestDocuments call."""
        results: list[pb.DocumentResult] = []
        for start in range(0, len(documents), batch):
            requests = [
                pb.IngestDocumentsRequest(
                    document=document_pb2.Document(document_id=i, title=t, mime_type="text/plain"),
                    content=c.encode(),
                )
                for i, t, c in documents[start : start + batch]
            ]
            response = await self.stub.IngestDocuments(
                iter(requests), metadata=self.caller(tenant), timeout=600
            )
            results.extend(response.results)
        return results


@asynccontextmanager
async def infrastructure() -> AsyncIterator[tuple[str, str, Path]]:
    """(database URL, NATS URL, scratch directory) of servers that live for the benchmark."""
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as directory:
        home = Path(directory)
        postgres = EmbeddedPostgres(home / "pg", free_port(), settings=PG_SETTINGS)
        nats = EmbeddedNats(home / "nats", free_port())
        postgres.start()
        nats.start()
        try:
            yield postgres.url, nats.url, home
        finally:
            nats.stop()
            postgres.stop()


@asynccontextmanager
async def retrieval_service(
    database_url: str, nats_url: str, home: Path, **overrides: Any
) -> AsyncIterator[Service]:
    keys = make_test_keys()
    jwks = home / "jwks.json"
    jwks.write_text(json.dumps(keys.jwks()))
    values: dict[str, Any] = {
        "port": 0,
        "database_url": database_url,
        "nats_url": nats_url,
        "identity_jwks_file": jwks,
        "log_level": "WARNING",
        "shutdown_grace_seconds": 1.0,
    }
    values.update(overrides)
    async with (
        running(APP, RetrievalSettings(**values)) as (_server, port),
        grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        ) as channel,
    ):
        yield Service(retrieval_service_pb2_grpc.RetrievalServiceStub(channel), keys, database_url)
