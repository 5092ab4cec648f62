"""What an ingestion answers stays readable by a client (4 MiB per message by default), whatever the caller
sent: a refused document's own text is echoed only in part, and IngestDocuments, which answers once with a
result per document, takes a bounded number of documents."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from google.rpc import error_details_pb2

from parapet.kit.errors import error_details
from parapet.retrieval.v1 import document_pb2
from parapet.retrieval.v1 import retrieval_service_pb2 as pb
from services.retrieval import servicer
from services.retrieval.extract import MAX_TITLE_CHARS
from services.retrieval.ingest import MAX_SOURCE_URI_CHARS
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


def _reason_and_fields(result: pb.DocumentResult) -> tuple[str, list[str]]:
    """The ErrorInfo reason and BadRequest fields of a refused document."""
    info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    for detail in result.error.details:
        detail.Unpack(info) or detail.Unpack(bad_request)
    return info.reason, [v.field for v in bad_request.field_violations]


async def test_a_title_or_source_longer_than_a_citation_takes_is_refused(client: Client) -> None:
    """Every citation of a document repeats its title and source URI. Unbounded until 2026-12-06: a document
    with a 1 MB title made every query that found a few of its chunks an answer of megabytes no client could
    read (RESOURCE_EXHAUSTED), for every reader of the tenant."""
    caller = client.as_(new_tenant())
    text = " ".join(f"Clause {i}: the supplier delivers spare parts within {i} days." for i in range(200))
    long_title, long_source, longest = doc("long-title"), doc("long-source"), doc("longest")
    long_title.title = "T" * 1_000_000
    long_source.source_uri = "https://docs.example/" + "s" * 1_000_000
    longest.title, longest.source_uri = "T" * MAX_TITLE_CHARS, "s" * MAX_SOURCE_URI_CHARS
    response = await client.ingest(
        caller, (long_title, text.encode()), (long_source, text.encode()), (longest, text.encode())
    )
    assert [r.outcome for r in response.results] == [pb.DOCUMENT_OUTCOME_REJECTED] * 2 + [
        pb.DOCUMENT_OUTCOME_CREATED
    ]
    assert [_reason_and_fields(r) for r in response.results[:2]] == [
        ("DOCUMENT_METADATA_INVALID", ["document.title"]),
        ("DOCUMENT_METADATA_INVALID", ["document.source_uri"]),
    ]
    assert response.ByteSize() < 10_000
    chunks = await client.query(caller, "when are spare parts delivered", top_k=8)
    assert len(chunks) == 8 and {c.citation.document_id for c in chunks} == {"longest"}
