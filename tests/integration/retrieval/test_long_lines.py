"""A line with no word the model knows (a DNA sequence, a hex dump) is one word piece however long: chunks are
bounded in characters too, so a query's answer stays readable and its chunks stay usable as context."""

from __future__ import annotations

from pathlib import Path

import grpc.aio

from parapet.kit.testing import TestKeys, running
from parapet.retrieval.v1 import retrieval_service_pb2 as pb
from parapet.retrieval.v1 import retrieval_service_pb2_grpc
from services.retrieval.app import APP
from tests.integration.retrieval.conftest import Client, doc, new_tenant, retrieval_settings


async def test_documents_of_one_huge_word_are_cut_into_chunks_a_query_can_return(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str
) -> None:
    """Before, each document below became one chunk of 2.5 MB (a single [UNK] word piece, far under the token
    bound), and every query that ranked two of them failed RESOURCE_EXHAUSTED: the answer was over gRPC's 4 MiB."""
    tenant = new_tenant()
    settings = retrieval_settings(
        tmp_path, keys, database_url, nats_url, retrieval_max_document_bytes=3 << 20
    )
    sequences = {"chr1.txt": b"ACGT" * 640_000, "chr2.txt": b"TTGCA" * 500_000}
    async with (
        running(APP, settings) as (_server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        client = Client(retrieval_service_pb2_grpc.RetrievalServiceStub(channel), keys)
        caller = client.as_(tenant)
        response = await client.ingest(caller, *[(doc(name), content) for name, content in sequences.items()])
        assert [r.outcome for r in response.results] == [pb.DOCUMENT_OUTCOME_CREATED] * 2
        assert all(r.chunk_count > 1 for r in response.results)

        chunks = await client.query(caller, "ACGTACGT", top_k=20, mode=pb.SEARCH_MODE_VECTOR)
        assert len(chunks) == 20
        for found in chunks:
            content = sequences[found.citation.document_id].decode()
            assert content[found.citation.start_offset : found.citation.end_offset] == found.text
