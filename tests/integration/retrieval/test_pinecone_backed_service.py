"""The whole service with the Pinecone store (official SDK against the local data-plane emulation)."""

from __future__ import annotations

from pathlib import Path

import grpc
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


async def test_pinecone_request_and_metadata_limits_are_kept(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str
) -> None:
    """Pinecone refuses an upsert request over 2 MB and a vector whose metadata is over 40 KB (the emulation now
    does too). Before, vectors went 200 to a request whatever their metadata: a document with some kilobytes of
    metadata and a few dozen chunks failed UNAVAILABLE for good, and so did every document of its stream; one
    whose metadata alone was over 40 KB too."""
    with PineconeEmulator(dimension=384) as emulator:
        settings = retrieval_settings(
            tmp_path,
            keys,
            database_url,
            nats_url,
            retrieval_vector_store="pinecone",
            retrieval_pinecone_host=emulator.host,
            retrieval_pinecone_api_key=emulator.api_key,
            retrieval_chunk_tokens=16,  # many small chunks, cheap to embed
            retrieval_chunk_overlap_tokens=0,
        )
        async with (
            running(APP, settings) as (_server, port),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            client = Client(retrieval_service_pb2_grpc.RetrievalServiceStub(channel), keys)
            tenant = new_tenant()
            caller = client.as_(tenant)
            # 30 KB of metadata: within Pinecone's 40 KB a vector, but 200 such vectors are 6 MB.
            described = doc("described")
            described.metadata.update({f"field{i}": str(i % 10) * 1000 for i in range(30)})
            text = " ".join(f"Fact number {i} is about the weather." for i in range(200)).encode()
            # 64 values of 1,000 characters: the contract's bounds, but 64 KB, beyond what Pinecone holds.
            oversized = doc("oversized")
            oversized.metadata.update({f"field{i}": "v" * 1000 for i in range(64)})
            response = await client.ingest(
                caller, (described, text), (oversized, b"Too much metadata."), (doc("plain"), b"Plain text.")
            )
            outcomes = [(r.document_id, r.outcome) for r in response.results]
            assert outcomes == [
                ("described", pb.DOCUMENT_OUTCOME_CREATED),
                ("oversized", pb.DOCUMENT_OUTCOME_REJECTED),
                ("plain", pb.DOCUMENT_OUTCOME_CREATED),
            ]
            assert response.results[0].chunk_count > 60
            refusal = response.results[1].error
            assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert "DOCUMENT_METADATA_INVALID" in refusal.details[0].value.decode(errors="ignore")
            assert len(emulator.namespaces[tenant].vectors) == response.results[0].chunk_count + 1
