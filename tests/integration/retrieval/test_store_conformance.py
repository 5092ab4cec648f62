"""One conformance suite for every VectorStore: pgvector and Pinecone (SDK against the local emulation).

Each test uses fresh tenant ids, so the shared database and emulator need no cleaning between tests.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from services.retrieval.stores.protocol import (
    VectorFilter,
    VectorRecord,
    VectorStore,
    VectorStoreUnavailable,
    chunk_id_for,
)

EVERYONE = VectorFilter(groups=())


def _tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def _unit(seed: int) -> list[float]:
    vector = np.random.default_rng(seed).standard_normal(384)
    result: list[float] = (vector / np.linalg.norm(vector)).tolist()
    return result


def _near(base: list[float], seed: int, noise: float) -> list[float]:
    vector = np.asarray(base) + noise * np.random.default_rng(seed).standard_normal(384) / np.sqrt(384)
    result: list[float] = (vector / np.linalg.norm(vector)).tolist()
    return result


def _record(
    document_id: str, ordinal: int, vector: list[float], groups: tuple[str, ...] = (), **metadata: str
) -> VectorRecord:
    return VectorRecord(chunk_id_for(document_id, "sha", ordinal), document_id, vector, groups, metadata)


async def test_nearest_first_with_cosine_similarity(store: VectorStore) -> None:
    tenant = _tenant()
    query = _unit(1)
    records = [_record(f"d{i}", 0, _near(query, 100 + i, noise=0.2 * (i + 1))) for i in range(6)]
    await store.upsert(tenant, list(reversed(records)))
    hits = await store.query(tenant, query, 4, EVERYONE)
    assert [h.document_id for h in hits] == ["d0", "d1", "d2", "d3"]
    expected = [float(np.dot(query, r.vector)) for r in records[:4]]
    assert [h.similarity for h in hits] == pytest.approx(expected, abs=1e-4)
    assert hits[0].chunk_id == records[0].chunk_id


async def test_upsert_replaces_by_chunk_id(store: VectorStore) -> None:
    tenant = _tenant()
    query = _unit(2)
    await store.upsert(tenant, [_record("d", 0, _unit(3))])
    await store.upsert(tenant, [_record("d", 0, query)])
    hits = await store.query(tenant, query, 10, EVERYONE)
    assert len(hits) == 1 and hits[0].similarity == pytest.approx(1.0, abs=1e-4)


async def test_tenants_never_see_each_other(store: VectorStore) -> None:
    first, second = _tenant(), _tenant()
    query = _unit(4)
    # Same document ids and identical vectors in both tenants.
    await store.upsert(first, [_record("shared", 0, query), _record("only-first", 0, _near(query, 5, 0.1))])
    await store.upsert(second, [_record("shared", 0, query)])
    first_hits = await store.query(first, query, 10, EVERYONE)
    second_hits = await store.query(second, query, 10, EVERYONE)
    assert sorted(h.document_id for h in first_hits) == ["only-first", "shared"]
    assert [h.document_id for h in second_hits] == ["shared"]
    await store.delete_tenant(second)
    assert len(await store.query(first, query, 10, EVERYONE)) == 2
    assert await store.query(second, query, 10, EVERYONE) == []


async def test_group_filter_is_inside_the_search(store: VectorStore) -> None:
    tenant = _tenant()
    query = _unit(6)
    # 30 "hr" chunks closer to the query than the one "finance" chunk: a post-filtered top 10 would be empty.
    records = [_record(f"hr{i}", 0, _near(query, 200 + i, 0.05), ("hr",)) for i in range(30)]
    records.append(_record("fin", 0, _near(query, 300, 0.6), ("finance",)))
    records.append(_record("public", 0, _near(query, 301, 0.9)))
    await store.upsert(tenant, records)
    finance = await store.query(tenant, query, 10, VectorFilter(groups=("finance",)))
    assert [h.document_id for h in finance] == ["fin", "public"]
    nobody = await store.query(tenant, query, 10, VectorFilter(groups=()))
    assert [h.document_id for h in nobody] == ["public"]
    both = await store.query(tenant, query, 40, VectorFilter(groups=("finance", "hr")))
    assert len(both) == 32


async def test_metadata_and_document_filters(store: VectorStore) -> None:
    tenant = _tenant()
    query = _unit(7)
    await store.upsert(
        tenant,
        [
            _record("a", 0, _near(query, 1, 0.1), lang="en", kind="faq"),
            _record("a", 1, _near(query, 2, 0.2), lang="en", kind="faq"),
            _record("b", 0, _near(query, 3, 0.05), lang="de", kind="faq"),
            _record("c", 0, _near(query, 4, 0.3), lang="en", kind="manual"),
        ],
    )
    english_faq = await store.query(
        tenant, query, 10, VectorFilter(groups=(), metadata={"lang": "en", "kind": "faq"})
    )
    assert {h.document_id for h in english_faq} == {"a"} and len(english_faq) == 2
    only_bc = await store.query(tenant, query, 10, VectorFilter(groups=(), document_ids=("b", "c")))
    assert [h.document_id for h in only_bc] == ["b", "c"]
    none = await store.query(tenant, query, 10, VectorFilter(groups=(), metadata={"lang": "fr"}))
    assert none == []


async def test_set_attributes_changes_who_can_read(store: VectorStore) -> None:
    tenant = _tenant()
    query = _unit(8)
    records = [_record("doc", i, _near(query, i, 0.1), ("hr",), v="1") for i in range(3)]
    await store.upsert(tenant, records)
    assert await store.query(tenant, query, 10, VectorFilter(groups=("finance",))) == []
    await store.set_attributes(tenant, [r.chunk_id for r in records], ("finance",), {"v": "2"})
    hits = await store.query(tenant, query, 10, VectorFilter(groups=("finance",), metadata={"v": "2"}))
    assert len(hits) == 3
    assert await store.query(tenant, query, 10, VectorFilter(groups=("hr",))) == []
    assert await store.query(tenant, query, 10, VectorFilter(groups=("finance",), metadata={"v": "1"})) == []


async def test_delete_chunks_and_documents(store: VectorStore) -> None:
    tenant = _tenant()
    query = _unit(9)
    keep = _record("keep", 0, _near(query, 1, 0.3))
    doomed = [_record("doomed", i, _near(query, 10 + i, 0.1)) for i in range(5)]
    stale = _record("keep", 1, _near(query, 20, 0.1))
    await store.upsert(tenant, [keep, stale, *doomed])
    await store.delete_chunks(tenant, [stale.chunk_id, "missing#0000"])
    await store.delete_documents(tenant, ["doomed", "never-existed"])
    hits = await store.query(tenant, query, 10, EVERYONE)
    assert [h.chunk_id for h in hits] == [keep.chunk_id]


async def test_many_vectors_round_trip_in_batches(store: VectorStore) -> None:
    tenant = _tenant()
    records = [_record(f"doc{i % 7}", i, _unit(1000 + i)) for i in range(450)]
    await store.upsert(tenant, records)
    for probe in (records[0], records[222], records[449]):
        hits = await store.query(tenant, probe.vector, 1, EVERYONE)
        assert hits[0].chunk_id == probe.chunk_id
    await store.delete_documents(tenant, [f"doc{i}" for i in range(7)])
    assert await store.query(tenant, records[0].vector, 5, EVERYONE) == []


async def test_wrong_dimension_is_an_error_not_a_silent_write(store: VectorStore) -> None:
    with pytest.raises(VectorStoreUnavailable):
        await store.upsert(_tenant(), [VectorRecord("x#1", "x", [0.1, 0.2, 0.3])])
