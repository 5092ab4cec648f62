"""The whole service with the Pinecone store (official SDK against the local data-plane emulation)."""

from __future__ import annotations

from pathlib import Path

import grpc.aio

from parapet.kit.testing import TestKeys, running
from parapet.retrieval.v1 import retrieval_service_pb2 as pb
from parapet.retrieval.v1 import retrieval_service_pb2_grpc
from services.retrieval.app import APP
from services.retrieval.pinecone_emulator import PineconeEmulator
from tests.integration.retrieval.conftest import Client, doc, new_tenant, retrieval_settings


async def test_ingest_query_groups_and_delete_through_pinecone(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str
) -> None:
    with PineconeEmulator(dimension=384) as emulator:
        settings = retrieval_settings(
            tmp_path,
            keys,
            database_url,
            nats_url,
            retrieval_vector_store="pinecone",
            retrieval_pinecone_host=emulator.host,
            retrieval_pinecone_api_key=emulator.api_key,
        )
        async with (
            running(APP, settings) as (_server, port),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            client = Client(retrieval_service_pb2_grpc.RetrievalServiceStub(channel), keys)
            tenant, other = new_tenant(), new_tenant()
            hr = client.as_(tenant, groups=("hr",))
            await client.ingest(
                hr, (doc("reviews", groups=("hr",)), b"Performance reviews happen every October.")
            )
            await client.ingest(hr, (doc("canteen"), b"The canteen serves vegetarian food daily."))
            await client.ingest(
                client.as_(other), (doc("reviews"), b"Performance reviews happen every October.")
            )
            assert set(emulator.namespaces) >= {tenant, other}  # one namespace per tenant
            assert len(emulator.namespaces[tenant].vectors) == 2

            vector = await client.query(
                hr, "when are performance reviews", mode=pb.SEARCH_MODE_VECTOR, top_k=1
            )
            assert vector[0].citation.document_id == "reviews"
            finance = client.as_(tenant, groups=("finance",))
            seen = await client.query(finance, "performance reviews", mode=pb.SEARCH_MODE_VECTOR, top_k=10)
            assert {c.citation.document_id for c in seen} == {"canteen"}

            await client.stub.DeleteDocument(pb.DeleteDocumentRequest(document_id="reviews"), metadata=hr)
            assert len(emulator.namespaces[tenant].vectors) == 1
            assert len(emulator.namespaces[other].vectors) == 1
