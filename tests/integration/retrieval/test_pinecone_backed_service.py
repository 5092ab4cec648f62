"""The whole service with the Pinecone store (official SDK against the local data-plane emulation)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from pinecone import Index

from parapet.kit.database import Database
from parapet.kit.testing import TestKeys
from parapet.retrieval.v1 import retrieval_service_pb2 as pb
from services.retrieval.orphans import PineconeOrphanSweeper
from services.retrieval.pinecone_emulator import PineconeEmulator
from services.retrieval.stores.pinecone_store import WRITTEN_AT, PineconeStore
from services.retrieval.stores.protocol import PUBLIC_GROUP, document_key
from tests.integration.retrieval.conftest import Client, doc, new_tenant, served


@asynccontextmanager
async def served_with_pinecone(
    tmp_path: Path,
    keys: TestKeys,
    database_url: str,
    nats_url: str,
    emulator: PineconeEmulator,
    **overrides: Any,
) -> AsyncIterator[Client]:
    """The retrieval service with the Pinecone store on `emulator`, and a client of it."""
    async with served(
        tmp_path,
        keys,
        database_url,
        nats_url,
        retrieval_vector_store="pinecone",
        retrieval_pinecone_host=emulator.host,
        retrieval_pinecone_api_key=emulator.api_key,
        **overrides,
    ) as client:
        yield client


def _vector(vector_id: str, document_id: str, written_at: int | None) -> dict[str, Any]:
    """A vector as the Pinecone store writes one (a unit vector), with the write time given (None: unstamped)."""
    metadata: dict[str, Any] = {"document_id": document_id, "groups": [PUBLIC_GROUP]}
    if written_at is not None:
        metadata[WRITTEN_AT] = written_at
    return {"id": vector_id, "values": [1.0] + [0.0] * 383, "metadata": metadata}


async def test_ingest_query_groups_and_delete_through_pinecone(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str
) -> None:
    with PineconeEmulator(dimension=384) as emulator:
        async with served_with_pinecone(tmp_path, keys, database_url, nats_url, emulator) as client:
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
        async with served_with_pinecone(
            tmp_path,
            keys,
            database_url,
            nats_url,
            emulator,
            retrieval_chunk_tokens=16,  # many small chunks, cheap to embed
            retrieval_chunk_overlap_tokens=0,
        ) as client:
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


def _stored(emulator: PineconeEmulator, tenant: str) -> dict[str, dict[str, Any]]:
    """Each vector's metadata in the tenant's namespace (what Pinecone holds)."""
    space = emulator.namespaces.get(tenant)
    return {} if space is None else {vector_id: dict(meta) for vector_id, (_, meta) in space.vectors.items()}


async def test_vectors_no_chunk_row_references_are_swept_from_pinecone(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str
) -> None:
    """Pinecone had no orphan sweep (pgvector's joins its table with the chunk rows): the vectors a failed delete
    left, and a namespace a tenant erasure could not delete, kept the deleted documents' embeddings and metadata for
    ever. The service now sweeps them past the grace, keeping live vectors however old, an ingestion's vectors not
    yet referenced (written within the grace), and vectors written before writes were stamped, which are stamped
    now and so swept one grace later."""
    with PineconeEmulator(dimension=384) as emulator:
        async with served_with_pinecone(
            tmp_path,
            keys,
            database_url,
            nats_url,
            emulator,
            retrieval_orphan_sweep_seconds=0.2,
        ) as client:
            tenant, erased = new_tenant(), new_tenant()
            caller = client.as_(tenant)
            await client.ingest(
                caller,
                (doc("kept"), b"Annual leave is 25 days a year."),
                (doc("deleted"), b"Book business travel two weeks ahead."),
            )
            index = Index(host=emulator.host, api_key=emulator.api_key)
            deleted_prefix = f"{document_key('deleted')}#"
            deleted = {i: m for i, m in _stored(emulator, tenant).items() if i.startswith(deleted_prefix)}
            kept = set(_stored(emulator, tenant)) - set(deleted)
            assert deleted and kept
            await client.stub.DeleteDocument(pb.DeleteDocumentRequest(document_id="deleted"), metadata=caller)

            long_ago = int(time.time()) - 7200
            in_flight = f"{document_key('new')}#{0:016x}"
            legacy = f"{document_key('old')}#{0:016x}"
            # What the failed delete would have left, aged two hours; an ingestion's vector written just now; one
            # written before writes were stamped; and a live vector untouched for two hours.
            index.upsert(
                vectors=[_vector(i, "deleted", long_ago) for i in deleted]
                + [_vector(in_flight, "new", int(time.time())), _vector(legacy, "old", None)],
                namespace=tenant,
            )
            for vector_id in kept:
                index.update(id=vector_id, set_metadata={WRITTEN_AT: long_ago}, namespace=tenant)
            # A tenant whose erasure committed but whose namespace delete failed: no row references any vector.
            index.upsert(
                vectors=[_vector(f"{document_key('x')}#{n:016x}", "x", long_ago) for n in range(3)],
                namespace=erased,
            )

            for _ in range(300):  # the service sweeps every 0.2 s: a few rounds at most
                if not set(deleted) & set(_stored(emulator, tenant)) and not _stored(emulator, erased):
                    break
                await asyncio.sleep(0.1)
            remaining = _stored(emulator, tenant)
            assert set(remaining) == kept | {in_flight, legacy}
            assert not _stored(emulator, erased)
            assert (
                remaining[legacy][WRITTEN_AT] >= long_ago + 7000
            )  # stamped by the sweep: its grace began now
            found = await client.query(caller, "annual leave", mode=pb.SEARCH_MODE_VECTOR, top_k=3)
            assert {c.citation.document_id for c in found} == {"kept"}


async def test_the_pinecone_sweep_walks_every_tenant_page_by_page(database: Database) -> None:
    """A round lists each namespace in pages (Pinecone lists at most 100 ids a page) until its end, one tenant after
    another, `batch` ids a tick, and reports the round's end; the next tick starts over with the tenants of then."""
    with PineconeEmulator(dimension=384) as emulator:
        index = Index(host=emulator.host, api_key=emulator.api_key)
        long_ago = int(time.time()) - 7200
        many, few = new_tenant(), new_tenant()
        for tenant, count in ((many, 250), (few, 3)):
            vectors = [_vector(f"{document_key('gone')}#{n:016x}", "gone", long_ago) for n in range(count)]
            index.upsert(vectors=vectors, namespace=tenant)
        sweeper = PineconeOrphanSweeper(PineconeStore(index), database, batch=150, grace_seconds=3600)
        ticks = [await sweeper.tick() for _ in range(3)]
        in_order = [150, 100, 3] if many < few else [3, 150, 100]  # tenants in name order
        assert [t.swept for t in ticks] == in_order
        assert [t.next_after is None for t in ticks] == [False, False, True]
        assert not _stored(emulator, many) and not _stored(emulator, few) and sweeper.swept == 253
        assert (await sweeper.tick()).swept == 0  # a new round: the namespaces are empty


class _FetchCounting(PineconeEmulator):
    """The emulation, noting how many ids each fetch asks for: Pinecone's fetch is a GET with every id in its
    query string."""

    def __init__(self) -> None:
        super().__init__(dimension=384)
        self.fetched: list[int] = []

    def handle(self, method: str, path: str, body: dict[str, Any], query: dict[str, Any]) -> tuple[int, Any]:
        if (method, path) == ("GET", "/vectors/fetch"):
            self.fetched.append(len(query.get("ids", [])))
        return super().handle(method, path, body, query)


async def test_the_pinecone_sweep_fetches_write_times_100_ids_a_request(database: Database) -> None:
    """The sweep read the write times of a tick's 1,000 unreferenced ids in one fetch: a URL of about 56 KB (49
    characters an id, `#` escaped), beyond what many HTTP front ends take, so a sweep over a namespace of many
    orphans could fail on every tick."""
    counting = _FetchCounting()
    with counting as emulator:
        index = Index(host=emulator.host, api_key=emulator.api_key)
        tenant, long_ago = new_tenant(), int(time.time()) - 7200
        for start in range(0, 1000, 250):
            vectors = [
                _vector(f"{document_key('gone')}#{n:016x}", "gone", long_ago)
                for n in range(start, start + 250)
            ]
            index.upsert(vectors=vectors, namespace=tenant)
        sweeper = PineconeOrphanSweeper(PineconeStore(index), database, batch=1000, grace_seconds=3600)
        assert (await sweeper.tick()).swept == 1000
        assert not _stored(emulator, tenant)
        assert sum(counting.fetched) == 1000 and max(counting.fetched) == 100, counting.fetched


async def test_a_change_of_groups_fetches_its_vectors_100_ids_a_request() -> None:
    """A document's groups or metadata changed: its vectors are fetched and written again with the new ones, and
    that fetch carried up to 1,000 ids in one URL too."""
    counting = _FetchCounting()
    with counting as emulator:
        index = Index(host=emulator.host, api_key=emulator.api_key)
        store, tenant = PineconeStore(index), new_tenant()
        ids = [f"{document_key('big')}#{n:016x}" for n in range(250)]
        index.upsert(vectors=[_vector(i, "big", int(time.time())) for i in ids], namespace=tenant)
        await store.set_attributes(tenant, ids, ["finance"], {"owner": "erin"})
        stored = _stored(emulator, tenant)
        assert all(stored[i]["groups"] == ["finance"] and stored[i]["m.owner"] == "erin" for i in ids)
        assert sum(counting.fetched) == 250 and max(counting.fetched) == 100, counting.fetched
