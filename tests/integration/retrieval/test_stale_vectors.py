"""Vectors no chunk row references: a replacement's not yet committed, or the garbage a failed delete leaves. They
cost neither an ingestion its outcome nor a query its results."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import text

from parapet.embeddings.minilm import MiniLmEmbedder, MiniLmOptions
from parapet.kit.database import Database
from parapet.retrieval.v1 import retrieval_service_pb2 as pb
from services.retrieval.orphans import OrphanSweeper
from services.retrieval.scope import tenant_scope
from services.retrieval.stores.pgvector import PgVectorStore
from services.retrieval.stores.protocol import VectorRecord, document_key
from tests.integration.retrieval.conftest import Client, doc, new_tenant, refused_vector_writes

HANDBOOK = {
    "leave": b"Annual leave is 25 days. Unused leave carries over up to five days.",
    "sick": b"Sick leave needs a doctor's note after three days away from work.",
    "parental": b"Parental leave is sixteen weeks at full pay for every parent.",
    "travel": b"Book business travel through the travel desk at least two weeks ahead.",
    "expenses": b"Expense reports are due on the fifth of each month with receipts.",
    "security": b"Lock your screen when you leave your desk, even for a minute.",
}


async def _vector_ids(database: Database, tenant: str) -> set[str]:
    async with tenant_scope(database, tenant) as session:
        return set((await session.execute(text("SELECT chunk_id FROM chunk_vectors"))).scalars())


async def test_a_replacement_is_reported_as_stored_when_its_old_vectors_cannot_be_deleted(
    client: Client, database: Database
) -> None:
    """The old vectors are deleted after the commit; when PostgreSQL refuses that, they are only garbage, as with
    DeleteDocument. Until 2026-12-06 the call failed UNAVAILABLE although the new text was stored (and a client
    retrying it was told UNCHANGED)."""
    tenant = new_tenant()
    caller = client.as_(tenant)
    await client.ingest(caller, (doc("policy"), b"Remote work is allowed two days a week."))
    old_vectors = await _vector_ids(database, tenant)

    new_text = b"Remote work is allowed every day. Offices stay open for those who want them."
    async with refused_vector_writes(database, tenant, "DELETE"):
        response = await client.ingest(caller, (doc("policy"), new_text))
    assert response.results[0].outcome == pb.DOCUMENT_OUTCOME_UPDATED
    listed = await client.stub.ListDocuments(pb.ListDocumentsRequest(), metadata=caller)
    assert [d.content_sha256 for d in listed.documents] == [hashlib.sha256(new_text).hexdigest()]
    # The old vectors stay behind, referenced by no chunk row, and no query returns their text.
    assert old_vectors < await _vector_ids(database, tenant)
    found = await client.query(caller, "remote work two days", mode=pb.SEARCH_MODE_VECTOR, top_k=5)
    assert [c.text for c in found] == [new_text.decode()]


@pytest.mark.parametrize("garbage", [3, 40], ids=["a-few", "many"])
async def test_a_vector_query_returns_top_k_results_past_stale_vectors(
    client: Client, database: Database, garbage: int
) -> None:
    """Stale vectors closer to the question than any live one. The store was asked for exactly top_k, and the
    stale hits, dropped by the re-check of the chunk rows, left the answer short (empty here)."""
    tenant = new_tenant()
    caller = client.as_(tenant)
    await client.ingest(caller, *((doc(name), content) for name, content in HANDBOOK.items()))
    question = "How many days of annual leave do I get?"
    expected = await client.query(caller, question, mode=pb.SEARCH_MODE_VECTOR, top_k=4)
    assert len(expected) == 4

    # What a failed delete leaves: vectors of a deleted document, here the question's own vector, so they rank first.
    (vector,) = await MiniLmEmbedder(MiniLmOptions(threads=1)).embed([question])
    stale = [VectorRecord(f"{document_key('gone')}#{i:016x}", "gone", vector) for i in range(garbage)]
    await PgVectorStore(database).upsert(tenant, stale)

    found = await client.query(caller, question, mode=pb.SEARCH_MODE_VECTOR, top_k=4)
    assert [c.citation.chunk_id for c in found] == [c.citation.chunk_id for c in expected]
    hybrid = await client.query(caller, question, mode=pb.SEARCH_MODE_HYBRID, top_k=4)
    assert len(hybrid) == 4 and "gone" not in {c.citation.document_id for c in hybrid}


async def test_vectors_no_chunk_row_references_are_swept_once_past_the_grace(
    client: Client, database: Database
) -> None:
    """The garbage of a deletion whose vector delete failed held the deleted document's embeddings and metadata
    for ever. The sweep deletes vectors without a chunk row that nothing wrote for the grace period, and keeps
    live vectors however old, and orphans an ingestion may still be about to reference (written recently)."""
    tenant = new_tenant()
    caller = client.as_(tenant)
    await client.ingest(caller, (doc("kept"), HANDBOOK["leave"]), (doc("deleted"), HANDBOOK["travel"]))
    async with refused_vector_writes(database, tenant, "DELETE"):
        await client.stub.DeleteDocument(pb.DeleteDocumentRequest(document_id="deleted"), metadata=caller)
    store = PgVectorStore(database)
    (vector,) = await MiniLmEmbedder(MiniLmOptions(threads=1)).embed(["in flight"])
    in_flight = VectorRecord(f"{document_key('new')}#{0:016x}", "new", vector)
    rewritten = VectorRecord(f"{document_key('new')}#{1:016x}", "new", vector)
    await store.upsert(tenant, [in_flight, rewritten])
    async with database.transaction() as session:  # two hours pass for all but the in-flight vector
        await session.execute(
            text(
                "UPDATE chunk_vectors SET write_time = now() - interval '2 hours'"
                " WHERE tenant_id = :t AND chunk_id <> :c"
            ),
            {"t": tenant, "c": in_flight.chunk_id},
        )
    await store.upsert(tenant, [rewritten])  # written again (an ingestion of the same text): young again
    before = await _vector_ids(database, tenant)
    async with tenant_scope(database, tenant) as session:
        garbage = set(
            (
                await session.execute(
                    text("SELECT chunk_id FROM chunk_vectors WHERE document_id = 'deleted'")
                )
            ).scalars()
        )
    assert garbage and garbage < before

    sweeper = OrphanSweeper(store, batch=500, grace_seconds=3600)
    while (await sweeper.tick()).next_after is not None:
        pass
    assert await _vector_ids(database, tenant) == before - garbage
    assert sweeper.swept >= len(garbage)
    found = await client.query(caller, "annual leave days", mode=pb.SEARCH_MODE_VECTOR, top_k=3)
    assert {c.citation.document_id for c in found} == {"kept"}
