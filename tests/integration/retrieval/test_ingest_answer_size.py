"""What an ingestion answers stays readable by a client (4 MiB per message by default), whatever the caller
sent: a refused document's own text is echoed only in part, and IngestDocuments, which answers once with a
result per document, takes a bounded number of documents."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from parapet.kit.errors import error_details
from parapet.retrieval.v1 import document_pb2
from parapet.retrieval.v1 import retrieval_service_pb2 as pb
from services.retrieval import servicer
from tests.integration.retrieval.conftest import Client, doc, new_tenant


async def test_a_refused_document_s_huge_id_and_metadata_key_are_echoed_only_in_part(client: Client) -> None:
    """A 1.5 MB id and a 1.5 MB metadata key came back whole in the result, the key twice (its field path and
    the message): a 4.5 MB answer the client refused to read (RESOURCE_EXHAUSTED), after the call had run."""
    caller = client.as_(new_tenant())
    huge_id = document_pb2.Document(document_id="i" * 1_500_000, mime_type="text/plain")
    bad_key = doc("fine")
    bad_key.metadata["k" * 1_500_000 + "\n"] = "v"  # not a printable name: refused
    nul_key = doc("nul")
    nul_key.metadata["n" * 1_500_000 + "\x00"] = "v"  # refused by the NUL check, which names the entry
    response = await client.ingest(caller, (huge_id, b"text"), (bad_key, b"text"), (nul_key, b"text"))
    assert [r.outcome for r in response.results] == [pb.DOCUMENT_OUTCOME_REJECTED] * 3
    assert response.ByteSize() < 10_000
    assert response.results[0].document_id == "i" * 512

    async def streamed() -> AsyncIterator[pb.StreamIngestDocumentsRequest]:
        yield pb.StreamIngestDocumentsRequest(document=bad_key, content=b"text")

    results = [
        r
        async for r in client.stub.StreamIngestDocuments(streamed(), metadata=caller)
        if r.HasField("result")
    ]
    assert results[0].result.outcome == pb.DOCUMENT_OUTCOME_REJECTED and results[0].ByteSize() < 10_000


async def test_ingest_documents_refuses_a_stream_longer_than_its_answer_can_hold(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One more document than the limit (lowered here; the server runs in this process): refused with a reason
    saying what to use instead, the documents before it processed (before, 100,000 refused documents made an
    answer of megabytes no client could read, after the whole stream had run)."""
    monkeypatch.setattr(servicer, "MAX_DOCUMENTS_PER_CALL", 3)
    caller = client.as_(new_tenant())
    texts = [b"Annual leave is 25 days.", b"Parking is free.", b"Lunch is at noon.", b"One too many."]

    async def requests() -> AsyncIterator[pb.IngestDocumentsRequest]:
        for i, text in enumerate(texts):
            yield pb.IngestDocumentsRequest(document=doc(f"d{i}"), content=text)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.stub.IngestDocuments(requests(), metadata=caller)
    details = error_details(refused.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.error_info is not None and details.error_info.reason == "TOO_MANY_DOCUMENTS"
    assert "StreamIngestDocuments" in details.message
    listed = await client.stub.ListDocuments(pb.ListDocumentsRequest(), metadata=caller)
    assert sorted(d.document_id for d in listed.documents) == ["d0", "d1", "d2"]
