"""Changing a stored document: who may, what counts as new content, and a failed vector-store update that
the retry repairs."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from sqlalchemy import text

from parapet.embeddings.minilm import MiniLmEmbedder, MiniLmOptions, load_tokenizer
from parapet.kit.database import Database
from parapet.kit.errors import Aborted, error_details
from parapet.retrieval.v1 import document_pb2
from parapet.retrieval.v1 import retrieval_service_pb2 as pb
from services.retrieval.ingest import Ingestor, Prepared, Progress, Writer
from services.retrieval.scope import tenant_scope
from services.retrieval.stores.pgvector import PgVectorStore
from tests.integration.retrieval.conftest import Client, doc, new_tenant, refused_vector_writes

SALARIES = b"The CEO earns 1,000,000 a year. Engineers earn between 70k and 120k."
FORGED = b"Everybody earns the same. Ask mallory for details."


def _refusal(result: pb.DocumentResult) -> tuple[int, str, str]:
    """(code, reason, message with the document id blanked) of a rejected document."""
    assert result.outcome == pb.DOCUMENT_OUTCOME_REJECTED
    info = error_details_pb2.ErrorInfo()
    assert result.error.details[0].Unpack(info)
    return result.error.code, info.reason, result.error.message.replace(result.document_id, "<id>")


async def _listed(client: Client, metadata: Any) -> dict[str, document_pb2.Document]:
    response = await client.stub.ListDocuments(pb.ListDocumentsRequest(), metadata=metadata)
    return {d.document_id: d for d in response.documents}


NOT_WRITABLE = (
    grpc.StatusCode.PERMISSION_DENIED.value[0],
    "DOCUMENT_NOT_WRITABLE",
    "document id '<id>' is taken by a document this caller may not change (only its owner or an admin, "
    "among those who can read it, may); choose another id",
)


async def test_an_ingest_caller_cannot_overwrite_or_regroup_a_document_it_cannot_read(client: Client) -> None:
    tenant = new_tenant()
    alice = client.as_(tenant, "alice", groups=("hr",))
    mallory = client.as_(tenant, "mallory")  # `ingest`, no groups
    await client.ingest(
        alice, (doc("salaries", groups=("hr",)), SALARIES), (doc("handbook"), b"Lunch is at noon.")
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.DeleteDocument(pb.DeleteDocumentRequest(document_id="salaries"), metadata=mallory)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND

    response = await client.ingest(
        mallory,
        (doc("salaries"), FORGED),
        (doc("salaries"), SALARIES),  # the stored text: no UNCHANGED to confirm a guess either
        (doc("handbook"), b"Lunch is whenever mallory says."),  # readable, but alice's
        (doc("notes"), b"Mallory's own notes."),
    )
    salaries, guess, handbook, notes = response.results
    # One refusal for every id mallory may not change, readable or not: it says the id is taken, no more.
    assert _refusal(salaries) == _refusal(guess) == _refusal(handbook) == NOT_WRITABLE
    assert notes.outcome == pb.DOCUMENT_OUTCOME_CREATED
    assert (response.progress.documents_rejected, response.progress.documents_done) == (3, 1)

    stored = (await _listed(client, alice))["salaries"]
    assert list(stored.access_groups) == ["hr"] and stored.owner_user_id == "alice"
    assert stored.content_sha256 == hashlib.sha256(SALARIES).hexdigest()
    (hit,) = await client.query(alice, "What does the CEO earn?", document_ids=["salaries"], top_k=1)
    assert "1,000,000" in hit.text
    assert set(await _listed(client, mallory)) == {"handbook", "notes"}
    assert await client.query(mallory, "salary CEO earns", document_ids=["salaries"]) == []


async def test_only_the_owner_or_an_admin_who_can_read_a_document_changes_it(client: Client) -> None:
    tenant = new_tenant()
    alice = client.as_(tenant, "alice", groups=("hr",))
    bob = client.as_(tenant, "bob", groups=("hr",))
    ada = client.as_(tenant, "ada", groups=("hr",), scopes=("ingest", "documents.read", "admin"))
    policy = b"Reviews happen every October."
    await client.ingest(alice, (doc("policy", groups=("hr",)), policy))

    # A colleague who reads it may not rewrite or re-group it (it would be credited to alice).
    refused = await client.ingest(
        bob, (doc("policy", groups=("hr",)), b"Reviews are cancelled."), (doc("policy"), policy)
    )
    assert [_refusal(r) for r in refused.results] == [NOT_WRITABLE, NOT_WRITABLE]

    # An admin who reads it may re-group it; the text is still alice's, so she stays its owner.
    regrouped = await client.ingest(ada, (doc("policy", groups=("hr", "managers")), policy))
    assert regrouped.results[0].outcome == pb.DOCUMENT_OUTCOME_UNCHANGED
    stored = (await _listed(client, alice))["policy"]
    assert (list(stored.access_groups), stored.owner_user_id) == (["hr", "managers"], "alice")

    # The owner may change her own text whatever its groups (she supplied it: nothing is disclosed), as a
    # pipeline that files documents under groups it is not in re-sends them.
    outside = client.as_(tenant, "alice", groups=("finance",))
    moved = await client.ingest(outside, (doc("policy", groups=("hr", "managers")), b"Reviews are in May."))
    assert moved.results[0].outcome == pb.DOCUMENT_OUTCOME_UPDATED

    # New text from the admin makes the admin its owner: owner_user_id names who gave the stored text.
    rewritten = await client.ingest(ada, (doc("policy", groups=("hr",)), b"Reviews happen every November."))
    assert rewritten.results[0].outcome == pb.DOCUMENT_OUTCOME_UPDATED
    assert (await _listed(client, alice))["policy"].owner_user_id == "ada"
    again = await client.ingest(alice, (doc("policy", groups=("hr",)), policy))
    assert _refusal(again.results[0]) == NOT_WRITABLE


async def test_the_same_bytes_with_another_media_type_are_extracted_again(client: Client) -> None:
    caller = client.as_(new_tenant())
    html = b"<html><body><p>Refunds take <b>five</b> days.</p><script>track()</script></body></html>"
    first = await client.ingest(caller, (doc("faq", mime="text/plain"), html))
    assert first.results[0].outcome == pb.DOCUMENT_OUTCOME_CREATED
    (as_text,) = await client.query(caller, "How long do refunds take?", top_k=1)
    assert "<script>" in as_text.text

    second = await client.ingest(caller, (doc("faq", mime="text/html"), html))
    assert second.results[0].outcome == pb.DOCUMENT_OUTCOME_UPDATED
    chunks = await client.query(caller, "How long do refunds take?", top_k=10)
    assert [c.text for c in chunks] == ["Refunds take five days."]
    stored = (await _listed(client, caller))["faq"]
    assert (stored.mime_type, stored.content_sha256) == ("text/html", hashlib.sha256(html).hexdigest())

    # Parameters of the media type do not change the extracted text.
    third = await client.ingest(caller, (doc("faq", mime="text/html; charset=utf-8"), html))
    assert third.results[0].outcome == pb.DOCUMENT_OUTCOME_UNCHANGED


async def test_a_failed_vector_store_update_is_made_by_the_retry(client: Client, database: Database) -> None:
    tenant = new_tenant()
    hr = client.as_(tenant, groups=("hr",))
    finance = client.as_(tenant, "fred", groups=("finance",))
    reviews = b"Performance reviews happen every October with the line manager."
    await client.ingest(hr, (doc("reviews", groups=("hr",)), reviews))
    shared = (doc("reviews", groups=("finance", "hr")), reviews)

    async with refused_vector_writes(database, tenant):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.ingest(hr, shared)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_details(raised.value).reason == "VECTOR_STORE_UNAVAILABLE"
    # Nothing was committed, so the retry still sees a change to make...
    assert list((await _listed(client, hr))["reviews"].access_groups) == ["hr"]

    retry = await client.ingest(hr, shared)
    assert retry.results[0].outcome == pb.DOCUMENT_OUTCOME_UNCHANGED
    # ...and makes it in the vector store too: finance finds the document by vector search.
    found = await client.query(finance, "when are performance reviews", mode=pb.SEARCH_MODE_VECTOR, top_k=5)
    assert [c.citation.document_id for c in found] == ["reviews"]


@pytest.fixture(scope="module")
def embedder() -> MiniLmEmbedder:
    return MiniLmEmbedder(MiniLmOptions(threads=1))


def _ingestor(database: Database, embedder: MiniLmEmbedder, store: PgVectorStore | None = None) -> Ingestor:
    return Ingestor(
        database, store or PgVectorStore(database), embedder, load_tokenizer(truncate=False), None
    )


async def _vector_groups(database: Database, tenant: str) -> dict[str, list[str]]:
    async with tenant_scope(database, tenant) as session:
        rows = await session.execute(text("SELECT chunk_id, access_groups FROM chunk_vectors"))
        return {r.chunk_id: list(r.access_groups) for r in rows}


@pytest.mark.parametrize("forged", [FORGED, SALARIES], ids=["other-text", "same-text"])
async def test_a_document_stored_by_someone_else_between_prepare_and_store_is_left_alone(
    database: Database, embedder: MiniLmEmbedder, forged: bytes
) -> None:
    tenant = new_tenant()
    ingestor = _ingestor(database, embedder)
    alice, mallory = Writer(tenant, "alice", ("hr",)), Writer(tenant, "mallory")
    prepared = await ingestor.prepare(mallory, 0, doc("salaries"), forged, Progress())
    assert isinstance(prepared, Prepared)  # the id was free when mallory's stream read it
    created = await ingestor.ingest(alice, 0, doc("salaries", groups=("hr",)), SALARIES, Progress())
    assert created.outcome == pb.DOCUMENT_OUTCOME_CREATED

    progress = Progress()
    (result,) = await ingestor.store(mallory, [prepared], progress)
    assert _refusal(result) == NOT_WRITABLE and progress.rejected == 1
    async with tenant_scope(database, tenant) as session:
        rows = (await session.execute(text("SELECT chunk_id, text, access_groups FROM chunks"))).all()
    assert [(r.text, list(r.access_groups)) for r in rows] == [(SALARIES.decode(), ["hr"])]
    # Mallory's vectors are gone; with the same text they were alice's own, and keep alice's groups.
    assert await _vector_groups(database, tenant) == {r.chunk_id: ["hr"] for r in rows}


Ingestion = Callable[[], Awaitable[object]]


class _Interleaved(PgVectorStore):
    """The pgvector store, with other complete ingestions run at set points of its attribute updates:
    `before[n]` just before its n-th `set_attributes` call (from 0), `after[n]` just after it; each once."""

    def __init__(
        self,
        database: Database,
        *,
        before: dict[int, Ingestion] | None = None,
        after: dict[int, Ingestion] | None = None,
    ) -> None:
        super().__init__(database)
        self._before = dict(before or {})
        self._after = dict(after or {})
        self._calls = 0

    async def set_attributes(
        self,
        tenant_id: str,
        chunk_ids: Sequence[str],
        access_groups: Sequence[str],
        metadata: Mapping[str, str],
    ) -> None:
        call, self._calls = self._calls, self._calls + 1
        if (meanwhile := self._before.pop(call, None)) is not None:
            await meanwhile()
        await super().set_attributes(tenant_id, chunk_ids, access_groups, metadata)
        if (meanwhile := self._after.pop(call, None)) is not None:
            await meanwhile()


def _regroup(database: Database, embedder: MiniLmEmbedder, writer: Writer, *groups: str) -> Ingestion:
    """A complete ingestion (its own store, no interleaving) giving the salaries document `groups`."""

    async def ingestion() -> None:
        await _ingestor(database, embedder).ingest(
            writer, 0, doc("salaries", groups=groups), SALARIES, Progress()
        )

    return ingestion


async def _row_and_store_groups(
    database: Database, tenant: str
) -> tuple[tuple[str, ...], set[tuple[str, ...]]]:
    """The salaries document's groups in its row, and the set of groups its vectors hold."""
    async with tenant_scope(database, tenant) as session:
        row = (await session.execute(text("SELECT access_groups FROM documents"))).scalar_one()
    return tuple(row), set(map(tuple, (await _vector_groups(database, tenant)).values()))


async def test_a_concurrent_change_aborts_an_attribute_change_and_the_retry_makes_it(
    database: Database, embedder: MiniLmEmbedder
) -> None:
    tenant = new_tenant()
    alice = Writer(tenant, "alice", ("hr",))
    await _regroup(database, embedder, alice, "hr")()

    # The winner runs just after the loser's store update, and writes the store after it.
    racing = _ingestor(
        database,
        embedder,
        _Interleaved(database, after={0: _regroup(database, embedder, alice, "hr", "legal")}),
    )
    finance_too = doc("salaries", groups=("finance", "hr"))
    with pytest.raises(Aborted) as raised:
        await racing.ingest(alice, 0, finance_too, SALARIES, Progress())
    assert raised.value.reason == "CONCURRENT_CONFLICT"
    assert await _row_and_store_groups(database, tenant) == (("hr", "legal"), {("hr", "legal")})

    retry = await racing.ingest(alice, 0, finance_too, SALARIES, Progress())
    assert retry.outcome == pb.DOCUMENT_OUTCOME_UNCHANGED
    assert await _row_and_store_groups(database, tenant) == (("finance", "hr"), {("finance", "hr")})


async def test_an_aborted_attribute_change_leaves_the_winners_groups_in_the_store(
    database: Database, embedder: MiniLmEmbedder
) -> None:
    """The winner runs just before the loser's store update: the loser's write lands last. It stayed there for
    good (rows hr+legal, store finance+hr: legal could no longer find the document by vector search)."""
    tenant = new_tenant()
    alice = Writer(tenant, "alice", ("hr",))
    await _regroup(database, embedder, alice, "hr")()

    racing = _ingestor(
        database,
        embedder,
        _Interleaved(database, before={0: _regroup(database, embedder, alice, "hr", "legal")}),
    )
    with pytest.raises(Aborted):
        await racing.ingest(alice, 0, doc("salaries", groups=("finance", "hr")), SALARIES, Progress())
    assert await _row_and_store_groups(database, tenant) == (("hr", "legal"), {("hr", "legal")})


async def test_a_change_committed_while_the_loser_puts_the_store_back_is_not_overwritten(
    database: Database, embedder: MiniLmEmbedder
) -> None:
    """Why the loser reconciles rather than putting back once: a third ingestion commits after the loser read
    the winner's row and before it writes it back, so that write is already stale."""
    tenant = new_tenant()
    alice = Writer(tenant, "alice", ("hr",))
    await _regroup(database, embedder, alice, "hr")()

    store = _Interleaved(
        database,
        before={
            0: _regroup(database, embedder, alice, "hr", "legal"),  # the winner
            1: _regroup(database, embedder, alice, "hr", "ops"),  # just before the loser's put-back
        },
    )
    with pytest.raises(Aborted):
        await _ingestor(database, embedder, store).ingest(
            alice, 0, doc("salaries", groups=("finance", "hr")), SALARIES, Progress()
        )
    assert await _row_and_store_groups(database, tenant) == (("hr", "ops"), {("hr", "ops")})


async def test_a_document_sent_again_in_the_same_call_ends_as_its_last_version(client: Client) -> None:
    """IngestDocuments prepares documents ahead of storing them in shared batches. Until 2026-12-06 a later
    version of an id was compared with the database as it stood before the earlier one was stored: X stored,
    then (Y, X) in one call stored Y and answered UNCHANGED for X; and (X, Y, X) of a new id kept the chunk rows
    of X without their vectors (Y's replacement had deleted them), so vector search never found it."""
    tenant = new_tenant()
    caller = client.as_(tenant)
    old, new = b"The gym opens at seven.", b"The gym now opens at eight."
    await client.ingest(caller, (doc("gym"), old))

    back = await client.ingest(caller, (doc("gym"), new), (doc("gym"), old))
    assert [r.outcome for r in back.results] == [pb.DOCUMENT_OUTCOME_UPDATED] * 2
    assert (await _listed(client, caller))["gym"].content_sha256 == hashlib.sha256(old).hexdigest()

    flip = await client.ingest(
        caller, (doc("flip"), SALARIES), (doc("flip"), FORGED), (doc("flip"), SALARIES)
    )
    assert [r.outcome for r in flip.results] == [
        pb.DOCUMENT_OUTCOME_CREATED,
        pb.DOCUMENT_OUTCOME_UPDATED,
        pb.DOCUMENT_OUTCOME_UPDATED,
    ]
    for mode in (pb.SEARCH_MODE_VECTOR, pb.SEARCH_MODE_FULL_TEXT, pb.SEARCH_MODE_HYBRID):
        found = await client.query(caller, "how much do engineers earn", mode=mode, document_ids=["flip"])
        assert [c.text for c in found] == [SALARIES.decode()], mode


async def _until_waiting_for_locks(database: Database, count: int) -> None:
    """Returns once `count` sessions of the database wait for a lock (the test's set points)."""
    for _ in range(1000):
        async with database.transaction() as session:
            waiting = (
                await session.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                )
            ).scalar_one()
        if waiting >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never {count} sessions waiting for a lock")


@pytest.mark.parametrize("second", ["mallory", "alice"])
async def test_two_ingestions_creating_one_id_at_once_take_turns(
    database: Database, embedder: MiniLmEmbedder, second: str
) -> None:
    """Both ingestions read the id as free, then store. The row lock of `_store_one` locks nothing while no row
    exists, so until 2026-12-06 the second overwrote the first's fresh document: both were CREATED, the first's
    vectors stayed behind unreferenced, and another caller (mallory) replaced alice's text and took it over."""
    tenant = new_tenant()
    ingestor = _ingestor(database, embedder)
    alice, other = Writer(tenant, "alice", ("hr",)), Writer(tenant, second)
    first = await ingestor.prepare(alice, 0, doc("salaries", groups=("hr",)), SALARIES, Progress())
    later = await ingestor.prepare(other, 0, doc("salaries"), FORGED, Progress())
    assert isinstance(first, Prepared) and isinstance(later, Prepared)  # the id is free for both

    # The first holds its transaction open until the second is storing too: a share lock on the chunk rows
    # stops its chunk delete (the first write of `chunks` in `_replace`) until released.
    async with database.transaction() as blocker:
        await blocker.execute(text("LOCK TABLE retrieval.chunks IN SHARE MODE"))
        storing_first = asyncio.create_task(ingestor.store(alice, [first], Progress()))
        await _until_waiting_for_locks(database, 1)
        storing_later = asyncio.create_task(ingestor.store(other, [later], Progress()))
        await _until_waiting_for_locks(database, 2)
    ((created,), (result,)) = await asyncio.gather(storing_first, storing_later)

    assert created.outcome == pb.DOCUMENT_OUTCOME_CREATED
    async with tenant_scope(database, tenant) as session:
        owner = (await session.execute(text("SELECT owner_user_id FROM documents"))).scalar_one()
        rows = (await session.execute(text("SELECT chunk_id, text FROM chunks"))).all()
    if second == "mallory":  # alice's document is hers: mallory is refused, as if she had come later
        assert _refusal(result) == NOT_WRITABLE
        assert (owner, [r.text for r in rows]) == ("alice", [SALARIES.decode()])
    else:  # alice's second version replaces her first, which is reported and whose vectors go
        assert result.outcome == pb.DOCUMENT_OUTCOME_UPDATED
        assert (owner, [r.text for r in rows]) == ("alice", [FORGED.decode()])
    assert set(await _vector_groups(database, tenant)) == {r.chunk_id for r in rows}
