"""The Pinecone store, through the official `pinecone` SDK's data-plane client.

One namespace per tenant (the tenant id), so a query cannot reach another tenant's vectors whatever its
filter. Access groups and caller metadata ride in each vector's metadata (`groups` list; caller keys
prefixed `m.`) and are filtered server-side in the query. A document's vectors are found by id prefix
(`<document key>#`, see `chunk_id_for`), Pinecone's recommended way to group records. The SDK is
synchronous, so calls run in worker threads.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from pinecone import Index
from pinecone.errors import PineconeError

from services.retrieval.stores.protocol import (
    VectorFilter,
    VectorHit,
    VectorRecord,
    VectorStoreUnavailable,
    document_key,
    reader_groups,
    stored_groups,
)

T = TypeVar("T")
#: Pinecone's limits: 1000 vectors and 2 MB per upsert request, 1000 ids per delete. A request is cut at 200
#: vectors or at this many bytes of their JSON, whichever comes first; the margin covers the SDK's own encoding.
_UPSERT_BATCH = 200
_UPSERT_BYTES = 1536 * 1024
_DELETE_BATCH = 1000
#: Ids per `fetch`: a GET with every id in its query string (1,000 chunk ids make a URL of about 56 KB, beyond what
#: many HTTP front ends take), although Pinecone's API admits 1,000.
_FETCH_BATCH = 100
#: The most ids one `list` page returns (Pinecone's own cap).
LIST_PAGE = 100
#: Metadata key of a vector's last write, in seconds since the epoch: Pinecone keeps no write time of its own, and
#: the orphan sweep (orphans.py) must not delete a vector an ingestion has just written and not yet referenced.
WRITTEN_AT = "written_at"


def _metadata(document_id: str, access_groups: Sequence[str], metadata: Mapping[str, str]) -> dict[str, Any]:
    return {
        "document_id": document_id,
        "groups": list(stored_groups(access_groups)),
        WRITTEN_AT: int(time.time()),
    } | {f"m.{key}": value for key, value in metadata.items()}


def pinecone_filter(where: VectorFilter) -> dict[str, Any]:
    """The metadata filter of a query (Pinecone's filter language)."""
    clauses: list[dict[str, Any]] = [{"groups": {"$in": list(reader_groups(where.groups))}}]
    clauses += [{f"m.{key}": {"$eq": value}} for key, value in sorted(where.metadata.items())]
    if where.document_ids:
        clauses.append({"document_id": {"$in": list(where.document_ids)}})
    return {"$and": clauses}


def _upsert_batches(records: Sequence[VectorRecord]) -> Iterator[list[dict[str, Any]]]:
    """`records` as upsert requests within Pinecone's limits. Cut by count alone (200), a document with a few
    kilobytes of metadata and a few dozen chunks made a request over 2 MB, refused for good (UNAVAILABLE on every
    retry, with every document of its stream)."""
    batch: list[dict[str, Any]] = []
    size = 0
    for record in records:
        item = {
            "id": record.chunk_id,
            "values": [float(x) for x in record.vector],
            "metadata": _metadata(record.document_id, record.access_groups, record.metadata),
        }
        item_size = len(json.dumps(item, ensure_ascii=False).encode())
        if batch and (len(batch) == _UPSERT_BATCH or size + item_size > _UPSERT_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item_size
    if batch:
        yield batch


class PineconeStore:
    name = "pinecone"

    def __init__(self, index: Index) -> None:
        self._index = index

    async def _call(self, function: Callable[..., T], /, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(function, **kwargs)
        except PineconeError as error:
            raise VectorStoreUnavailable(f"pinecone: {type(error).__name__}: {error}") from error

    async def upsert(self, tenant_id: str, records: Sequence[VectorRecord]) -> None:
        for batch in _upsert_batches(records):
            await self._call(self._index.upsert, vectors=batch, namespace=tenant_id)

    async def query(
        self, tenant_id: str, vector: Sequence[float], top_k: int, where: VectorFilter
    ) -> list[VectorHit]:
        response = await self._call(
            self._index.query,
            vector=[float(x) for x in vector],
            top_k=top_k,
            namespace=tenant_id,
            filter=pinecone_filter(where),
            include_metadata=True,
        )
        return [
            VectorHit(match.id, str((match.metadata or {}).get("document_id", "")), float(match.score))
            for match in response.matches
        ]

    async def set_attributes(
        self,
        tenant_id: str,
        chunk_ids: Sequence[str],
        access_groups: Sequence[str],
        metadata: Mapping[str, str],
    ) -> None:
        # setMetadata merges keys, so metadata keys the document no longer has would linger: re-fetch and
        # null them out is not possible in Pinecone, hence the full vector is re-upserted with new metadata.
        for start in range(0, len(chunk_ids), _FETCH_BATCH):
            ids = list(chunk_ids[start : start + _FETCH_BATCH])
            fetched = await self._call(self._index.fetch, ids=ids, namespace=tenant_id)
            records = [
                VectorRecord(
                    chunk_id=vector_id,
                    document_id=str((item.metadata or {}).get("document_id", "")),
                    vector=list(item.values),
                    access_groups=tuple(access_groups),
                    metadata=metadata,
                )
                for vector_id, item in fetched.vectors.items()
            ]
            await self.upsert(tenant_id, records)

    async def delete_chunks(self, tenant_id: str, chunk_ids: Sequence[str]) -> None:
        for start in range(0, len(chunk_ids), _DELETE_BATCH):
            await self._call(
                self._index.delete, ids=list(chunk_ids[start : start + _DELETE_BATCH]), namespace=tenant_id
            )

    async def delete_documents(self, tenant_id: str, document_ids: Sequence[str]) -> None:
        for document_id in document_ids:
            ids = await self._ids_with_prefix(tenant_id, f"{document_key(document_id)}#")
            await self.delete_chunks(tenant_id, ids)

    async def delete_tenant(self, tenant_id: str) -> None:
        await self._call(self._index.delete, delete_all=True, namespace=tenant_id)

    # What the orphan sweep (orphans.py) needs: Pinecone cannot join its vectors with the chunk rows, so the sweep
    # walks each tenant's ids page by page and asks PostgreSQL which of them a chunk row references.

    async def namespaces(self) -> list[str]:
        """Every tenant with vectors, in order."""
        stats = await self._call(self._index.describe_index_stats)
        return sorted(stats.namespaces or {})

    async def list_page(self, tenant_id: str, limit: int, token: str | None) -> tuple[list[str], str | None]:
        """Up to `limit` (at most `LIST_PAGE`) ids of the tenant after `token`; the token of the next page, None at
        the end."""
        page = await self._call(
            self._index.list_paginated, namespace=tenant_id, limit=limit, pagination_token=token
        )
        following = page.pagination.next if page.pagination is not None else None
        return [str(item.id) for item in page.vectors], following or None

    async def write_times(self, tenant_id: str, chunk_ids: Sequence[str]) -> dict[str, float | None]:
        """Each existing vector's last write (None when written before writes were stamped); ids no longer
        stored are left out."""
        times: dict[str, float | None] = {}
        for start in range(0, len(chunk_ids), _FETCH_BATCH):
            ids = list(chunk_ids[start : start + _FETCH_BATCH])
            fetched = await self._call(self._index.fetch, ids=ids, namespace=tenant_id)
            for vector_id, item in fetched.vectors.items():
                written = (item.metadata or {}).get(WRITTEN_AT)
                times[vector_id] = float(written) if isinstance(written, int | float) else None
        return times

    async def stamp_written(self, tenant_id: str, chunk_ids: Sequence[str], at: float) -> None:
        """Sets these vectors' write time to `at` without rewriting them (one request per vector: Pinecone updates
        one id at a time); used once for vectors written before writes were stamped."""
        for chunk_id in chunk_ids:
            await self._call(
                self._index.update, id=chunk_id, set_metadata={WRITTEN_AT: int(at)}, namespace=tenant_id
            )

    async def _ids_with_prefix(self, tenant_id: str, prefix: str) -> list[str]:
        def collect() -> list[str]:
            return [
                str(item.id)
                for page in self._index.list(prefix=prefix, namespace=tenant_id)
                for item in page.vectors
            ]

        return await self._call(collect)
