"""Tenant isolation (RLS and every RPC), document groups, deletion with events, erasure."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import nats
import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from parapet.kit.database import Database
from parapet.retrieval.v1 import documents_deleted_event_pb2 as events_pb2
from parapet.retrieval.v1 import retrieval_service_pb2 as pb
from services.retrieval.scope import tenant_scope
from tests.integration.retrieval.conftest import Client, doc, new_tenant

ALL_MODES = (pb.SEARCH_MODE_HYBRID, pb.SEARCH_MODE_VECTOR, pb.SEARCH_MODE_FULL_TEXT)
SHARED = b"The merger with Northwind closes in March; the board approved the price of 40 dollars per share."


async def test_two_tenants_with_overlapping_content_never_meet(client: Client) -> None:
    acme, globex = new_tenant(), new_tenant()
    # Same document ids, same text, plus one document each that only its tenant has.
    await client.ingest(
        client.as_(acme), (doc("merger", owner="acme"), SHARED), (doc("acme-only"), b"Acme secret.")
    )
    await client.ingest(
        client.as_(globex), (doc("merger", owner="globex"), SHARED), (doc("globex-only"), b"Globex secret.")
    )
    for tenant, other in ((acme, "globex"), (globex, "acme")):
        caller = client.as_(tenant)
        for mode in ALL_MODES:
            for query in ("merger Northwind price per share", f"{other} secret", "secret"):
                chunks = await client.query(caller, query, mode=mode, top_k=100)
                assert all(c.metadata.get("owner", "") != other for c in chunks)
                assert f"{other}-only" not in {c.citation.document_id for c in chunks}
                assert other.capitalize() not in " ".join(c.text for c in chunks)
            # Naming the other tenant's document explicitly finds nothing of it.
            named = await client.query(caller, "secret", mode=mode, document_ids=[f"{other}-only"])
            assert named == []
        listed = await client.stub.ListDocuments(pb.ListDocumentsRequest(), metadata=caller)
        assert sorted(d.document_id for d in listed.documents) == sorted(
            ["merger", f"{tenant_name(tenant, acme)}-only"]
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.stub.DeleteDocument(
                pb.DeleteDocumentRequest(document_id=f"{other}-only"), metadata=caller
            )
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    # Deleting one tenant's "merger" leaves the other's.
    await client.stub.DeleteDocument(
        pb.DeleteDocumentRequest(document_id="merger"), metadata=client.as_(acme)
    )
    remaining = await client.query(client.as_(globex), "Northwind merger", top_k=5)
    assert "merger" in {c.citation.document_id for c in remaining}
    assert await client.query(client.as_(acme), "Northwind merger", mode=pb.SEARCH_MODE_FULL_TEXT) == []


def tenant_name(tenant: str, acme: str) -> str:
    return "acme" if tenant == acme else "globex"


async def test_finance_never_sees_hr(client: Client) -> None:
    tenant = new_tenant()
    admin = client.as_(tenant, groups=("finance", "hr"))
    await client.ingest(
        admin,
        (
            doc("salaries", groups=("hr",)),
            b"Salary bands: engineers earn between 70k and 120k. HR confidential.",
        ),
        (doc("budget", groups=("finance",)), b"The 2027 budget allocates 2M to engineering salaries."),
        (doc("handbook"), b"Everyone: salary is paid on the 25th of each month."),
    )
    finance = client.as_(tenant, "fred", groups=("finance",))
    for mode in ALL_MODES:
        for query in (
            "salary bands engineers HR confidential",
            "Salary bands: engineers earn between 70k and 120k",
        ):
            ids = {c.citation.document_id for c in await client.query(finance, query, mode=mode, top_k=100)}
            assert "salaries" not in ids
            assert ids <= {"budget", "handbook"}
        named = await client.query(finance, "salary", mode=mode, document_ids=["salaries"])
        assert named == []
    listed = await client.stub.ListDocuments(pb.ListDocumentsRequest(), metadata=finance)
    assert sorted(d.document_id for d in listed.documents) == ["budget", "handbook"]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.DeleteDocument(pb.DeleteDocumentRequest(document_id="salaries"), metadata=finance)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    nobody = client.as_(tenant, "nina", groups=())
    assert {c.citation.document_id for c in await client.query(nobody, "salary", top_k=100)} == {"handbook"}
    # Moving the document to "finance" (same content: nothing re-embedded) makes it visible to finance only.
    moved = await client.ingest(
        admin,
        (
            doc("salaries", groups=("finance",)),
            b"Salary bands: engineers earn between 70k and 120k. HR confidential.",
        ),
    )
    assert moved.results[0].outcome == pb.DOCUMENT_OUTCOME_UNCHANGED
    for mode in ALL_MODES:
        ids = {
            c.citation.document_id for c in await client.query(finance, "salary bands", mode=mode, top_k=100)
        }
        assert "salaries" in ids
    hr = client.as_(tenant, "hanna", groups=("hr",))
    assert "salaries" not in {
        c.citation.document_id for c in await client.query(hr, "salary bands", top_k=100)
    }


async def test_row_level_security_confines_the_tenant_role(client: Client, database: Database) -> None:
    mine, theirs = new_tenant(), new_tenant()
    await client.ingest(client.as_(mine), (doc("a"), b"Mine."))
    await client.ingest(client.as_(theirs), (doc("b"), b"Theirs."))
    async with tenant_scope(database, mine) as session:
        for table in ("documents", "chunks", "chunk_vectors"):
            rows = (await session.execute(text(f"SELECT DISTINCT tenant_id FROM {table}"))).scalars().all()
            assert rows == [mine], table
        peek = await session.execute(text("SELECT count(*) FROM chunks WHERE tenant_id = :t"), {"t": theirs})
        assert peek.scalar() == 0
    with pytest.raises(DBAPIError, match="row-level security"):
        async with tenant_scope(database, mine) as session:
            await session.execute(
                text(
                    "INSERT INTO documents (tenant_id, document_id, mime_type, content_sha256, size_bytes, chunk_count)"
                    " VALUES (:t, 'x', 'text/plain', 'x', 1, 0)"
                ),
                {"t": theirs},
            )
    async with tenant_scope(database, mine) as session:
        await session.execute(text("DELETE FROM documents WHERE tenant_id = :t"), {"t": theirs})
    assert len(await client.query(client.as_(theirs), "Theirs")) == 1


async def test_delete_document_removes_chunks_and_vectors_and_publishes_an_event(
    client: Client, database: Database, nats_url: str
) -> None:
    tenant = new_tenant()
    caller = client.as_(tenant, "dora")
    connection = await nats.connect(nats_url)
    try:
        subscription = await connection.subscribe(f"parapet.retrieval.v1.documents.deleted.{tenant}")
        await client.ingest(caller, (doc("gone"), b"Delete me please."), (doc("kept"), b"Keep me please."))
        response = await client.stub.DeleteDocument(
            pb.DeleteDocumentRequest(document_id="gone"), metadata=caller
        )
        assert response.deleted
        message = await subscription.next_msg(timeout=10)
        event = events_pb2.DocumentsDeletedEvent.FromString(message.data)
        assert list(event.document_ids) == ["gone"] and event.tenant_id == tenant
        assert event.reason == events_pb2.DELETION_REASON_DOCUMENT_DELETED and event.requested_by == "dora"
        assert message.headers is not None
        assert message.headers["ce-id"] == event.event_id == message.headers["Nats-Msg-Id"]
        assert message.headers["ce-type"] == "dev.parapet.retrieval.v1.DocumentsDeletedEvent"
        assert message.headers["ce-subject"] == tenant

        for mode in ALL_MODES:
            assert {c.citation.document_id for c in await client.query(caller, "please", mode=mode)} == {
                "kept"
            }
        async with tenant_scope(database, tenant) as session:
            for table in ("chunks", "chunk_vectors"):
                count = await session.execute(
                    text(f"SELECT count(*) FROM {table} WHERE document_id = 'gone'")
                )
                assert count.scalar() == 0, table

        again = await client.stub.DeleteDocument(
            pb.DeleteDocumentRequest(document_id="gone", allow_missing=True), metadata=caller
        )
        assert not again.deleted
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.stub.DeleteDocument(pb.DeleteDocumentRequest(document_id="gone"), metadata=caller)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND

        # A changed document's old content is announced too (answers grounded in it are stale).
        await client.ingest(caller, (doc("kept"), b"Keep me, version two."))
        replaced = events_pb2.DocumentsDeletedEvent.FromString((await subscription.next_msg(timeout=10)).data)
        assert replaced.reason == events_pb2.DELETION_REASON_REPLACED and list(replaced.document_ids) == [
            "kept"
        ]
    finally:
        await connection.close()


async def test_erasure_of_a_user_and_of_a_tenant(client: Client, nats_url: str) -> None:
    tenant = new_tenant()
    uma, ulf = client.as_(tenant, "uma"), client.as_(tenant, "ulf")
    await client.ingest(uma, *[(doc(f"uma-{i}"), f"Uma's note {i}.".encode()) for i in range(3)])
    await client.ingest(ulf, (doc("ulf-1"), b"Ulf's note."))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.DeleteDocuments(pb.DeleteDocumentsRequest(user_id="uma"), metadata=ulf)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.DeleteDocuments(pb.DeleteDocumentsRequest(), metadata=ulf)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    connection = await nats.connect(nats_url)
    try:
        subscription = await connection.subscribe(f"parapet.retrieval.v1.documents.deleted.{tenant}")
        erased = await client.stub.DeleteDocuments(pb.DeleteDocumentsRequest(user_id="uma"), metadata=uma)
        assert erased.deleted_count == 3
        event = events_pb2.DocumentsDeletedEvent.FromString((await subscription.next_msg(timeout=10)).data)
        assert event.reason == events_pb2.DELETION_REASON_USER_ERASURE and event.user_id == "uma"
        assert sorted(event.document_ids) == ["uma-0", "uma-1", "uma-2"]
        assert {c.citation.document_id for c in await client.query(ulf, "note", top_k=20)} == {"ulf-1"}

        # An admin's own credential, not one scoped to documents: a scope narrows even an admin.
        admin = client.as_(tenant, "root", roles=("admin",), scopes=())
        narrowed = client.as_(tenant, "root", roles=("admin",))  # scoped to ingest and documents.*
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.stub.DeleteDocuments(
                pb.DeleteDocumentsRequest(all_documents=True), metadata=narrowed
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        everything = await client.stub.DeleteDocuments(
            pb.DeleteDocumentsRequest(all_documents=True), metadata=admin
        )
        assert everything.deleted_count == 1
        event = events_pb2.DocumentsDeletedEvent.FromString((await subscription.next_msg(timeout=10)).data)
        assert event.reason == events_pb2.DELETION_REASON_TENANT_ERASURE
        assert await client.query(admin, "note", top_k=20) == []
        repeat = await client.stub.DeleteDocuments(
            pb.DeleteDocumentsRequest(all_documents=True), metadata=admin
        )
        assert repeat.deleted_count == 0
        await asyncio.sleep(0)
    finally:
        await connection.close()


async def test_an_erasure_of_long_ids_is_announced_and_blocks_no_other_event(
    client: Client, database: Database, nats_url: str
) -> None:
    """1,000 ids of 512 CJK characters are 1.5 MB, over NATS's 1 MB message limit. Until 2026-12-06 such an
    erasure's event was refused on every publish, and, the outbox's oldest row, it stopped every later
    DocumentsDeletedEvent of every tenant: semantic caches kept answers grounded in deleted documents."""
    tenant, other = new_tenant(), new_tenant()
    ids = [f"{i:04d}" + "文" * 508 for i in range(1000)]
    await _documents_of_uma(database, tenant, ids)
    connection = await nats.connect(nats_url)
    try:
        events = await _erase_uma_beside_another_deletion(client, connection, tenant, other, len(ids))
        assert all(e.reason == events_pb2.DELETION_REASON_USER_ERASURE and e.user_id == "uma" for e in events)
        assert sorted(i for e in events for i in e.document_ids) == ids
    finally:
        await connection.close()


FULL_ID = 4 + 508 * 3  # bytes of a 512-character id: 4 digits and 508 CJK characters
EVENT_HEADROOM = (
    64  # the event's payload alone stays this far under the limit; its headers are about 300 bytes
)


def _ids_filling(event: events_pb2.DocumentsDeletedEvent, size: int) -> list[str]:
    """Distinct document ids (of at most 512 characters) that make ``event`` ``size`` bytes encoded."""
    ids: list[str] = []
    piece = events_pb2.DocumentsDeletedEvent()
    piece.CopyFrom(event)
    while size - piece.ByteSize() >= FULL_ID + 3 + 2000:  # an id costs its bytes, a tag and two of length
        ids.append(f"{len(ids):04d}" + "文" * 508)
        piece.document_ids.append(ids[-1])
    room = size - piece.ByteSize()
    count = -(-room // 503)  # ASCII ids of at most 500 bytes fill the rest
    for n in range(count):
        length = (room - 3 * count) // count + (1 if n < (room - 3 * count) % count else 0)
        ids.append(f"{len(ids):04d}" + "x" * (length - 4))
        piece.document_ids.append(ids[-1])
    assert piece.ByteSize() == size
    return ids


async def test_an_erasure_just_under_the_message_limit_is_announced_and_blocks_no_other_event(
    client: Client, database: Database, nats_url: str
) -> None:
    """nats-py refuses a payload over the server's max_payload before sending it, and the relay split only events
    it refused so; but the server counts the headers too (the CloudEvents attributes and Nats-Msg-Id, about 300
    bytes). Until 2026-12-06 an event whose payload alone was just under the limit was sent, refused with
    "Maximum Payload Violation" and the relay's connection closed; never split, it stayed the outbox's oldest row
    and held back every later event, each retry dropping the service's NATS connection again."""
    tenant, other = new_tenant(), new_tenant()
    connection = await nats.connect(nats_url)
    try:
        # The event as the service will make it, its delete time of the longest encoding: the real one is at most
        # a few bytes shorter.
        like = events_pb2.DocumentsDeletedEvent(
            event_id=str(uuid.uuid4()),
            tenant_id=tenant,
            reason=events_pb2.DELETION_REASON_USER_ERASURE,
            user_id="uma",
            requested_by="uma",
        )
        like.delete_time.GetCurrentTime()
        like.delete_time.nanos = 999_999_999
        ids = _ids_filling(like, connection.max_payload - EVENT_HEADROOM)
        assert len(ids) <= 1000  # one event
        await _documents_of_uma(database, tenant, ids)
        events = await _erase_uma_beside_another_deletion(client, connection, tenant, other, len(ids))
        assert all((e.user_id, e.requested_by) == ("uma", "uma") for e in events)  # as the size was computed
        assert sorted(i for e in events for i in e.document_ids) == sorted(ids)
    finally:
        await connection.close()


async def _documents_of_uma(database: Database, tenant: str, ids: list[str]) -> None:
    """Document rows owned by "uma", and nothing else: no text to embed, nothing to search."""
    async with tenant_scope(database, tenant) as session:
        await session.execute(
            text(
                "INSERT INTO documents (tenant_id, document_id, mime_type, owner_user_id, content_sha256,"
                " size_bytes, chunk_count) VALUES (:t, :d, 'text/plain', 'uma', '', 0, 0)"
            ),
            [{"t": tenant, "d": document_id} for document_id in ids],
        )


async def _erase_uma_beside_another_deletion(
    client: Client, connection: NatsClient, tenant: str, other: str, count: int
) -> list[events_pb2.DocumentsDeletedEvent]:
    """Erases uma's ``count`` documents of ``tenant``, then deletes a document of ``other``: that later event must
    arrive (the erasure's must not block it); returns the erasure's events once they announced ``count`` ids."""
    erasures = await connection.subscribe(f"parapet.retrieval.v1.documents.deleted.{tenant}")
    deletions = await connection.subscribe(f"parapet.retrieval.v1.documents.deleted.{other}")
    uma = client.as_(tenant, "uma")
    erased = await client.stub.DeleteDocuments(pb.DeleteDocumentsRequest(user_id="uma"), metadata=uma)
    assert erased.deleted_count == count
    caller = client.as_(other)
    await client.ingest(caller, (doc("memo"), b"A short memo."))
    await client.stub.DeleteDocument(pb.DeleteDocumentRequest(document_id="memo"), metadata=caller)
    event = events_pb2.DocumentsDeletedEvent.FromString((await deletions.next_msg(timeout=10)).data)
    assert list(event.document_ids) == ["memo"]
    events: list[events_pb2.DocumentsDeletedEvent] = []
    while sum(len(e.document_ids) for e in events) < count:
        events.append(events_pb2.DocumentsDeletedEvent.FromString((await erasures.next_msg(timeout=10)).data))
    return events
