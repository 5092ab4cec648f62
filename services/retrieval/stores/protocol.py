"""The vector-store contract. Both stores pass one conformance suite (tests/integration/retrieval).

A store keeps, per tenant, one unit vector per chunk with the chunk's document id, access groups and
metadata, and answers nearest-neighbour queries with the tenant, group, metadata and document filters
applied *inside* the search (never by post-filtering a short list). The PostgreSQL chunk rows stay the
source of truth for what a query may return; stores hold only vectors and filter attributes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

#: Stored in place of an empty group list: a document every user of the tenant may read. Callers always
#: match it, so "no groups" needs no special case in a store's filter.
PUBLIC_GROUP = "*"


def stored_groups(access_groups: Sequence[str]) -> tuple[str, ...]:
    """The groups a store records for a document: its own, or `PUBLIC_GROUP` when it has none."""
    return tuple(sorted(set(access_groups))) or (PUBLIC_GROUP,)


def reader_groups(caller_groups: Sequence[str]) -> tuple[str, ...]:
    """The stored groups a caller may match: theirs plus `PUBLIC_GROUP`."""
    return (*sorted(set(caller_groups) - {PUBLIC_GROUP}), PUBLIC_GROUP)


#: The most a chunk's filter attributes (document id, groups, metadata) may take as UTF-8 JSON: what every store
#: holds with a vector (Pinecone refuses over 40 KB of metadata a vector), with room for a store's own encoding.
#: Ingestion refuses a document beyond it, so that one accepted by one store is accepted by any.
MAX_ATTRIBUTES_BYTES = 32 * 1024


def attributes_size(document_id: str, access_groups: Sequence[str], metadata: Mapping[str, str]) -> int:
    """The size of a chunk's filter attributes, to compare with `MAX_ATTRIBUTES_BYTES`."""
    attributes = {"document_id": document_id, "groups": stored_groups(access_groups), "metadata": metadata}
    return len(json.dumps(attributes, ensure_ascii=False, default=dict).encode())


def readable_by(document_groups: Sequence[str], caller_groups: Sequence[str]) -> bool:
    """Whether a caller may read a document: the rule of every query's group filter (stored groups
    overlap the reader's), for code that holds a document already."""
    return not set(stored_groups(document_groups)).isdisjoint(reader_groups(caller_groups))


def document_key(document_id: str) -> str:
    """A fixed-length, id-safe key of a document (ids may be any 512 characters; Pinecone ids are ASCII)."""
    return hashlib.sha256(document_id.encode()).hexdigest()[:32]


def chunk_id_for(document_id: str, content_key: str, ordinal: int) -> str:
    """The chunk id: `<document key>#<content and position>`, stable while the document is unchanged.
    `content_key` names what the chunks were extracted from (content hash and media type).

    The document-key prefix lets stores that list ids by prefix (Pinecone) find a document's vectors.
    """
    part = hashlib.sha256(f"{content_key}:{ordinal}".encode()).hexdigest()[:16]
    return f"{document_key(document_id)}#{part}"


@dataclass(frozen=True)
class VectorRecord:
    """One chunk's vector and the attributes queries filter on."""

    chunk_id: str
    document_id: str
    vector: Sequence[float]
    access_groups: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VectorFilter:
    """What a query may match. `groups` are the caller's groups (public documents always match)."""

    groups: tuple[str, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)
    document_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class VectorHit:
    chunk_id: str
    document_id: str
    #: Cosine similarity in [-1, 1], higher is closer.
    similarity: float


class VectorStoreUnavailable(Exception):
    """The store cannot answer now; the caller may retry."""


class VectorStore(Protocol):
    """Per-tenant vector storage with filtered nearest-neighbour search."""

    name: str

    async def upsert(self, tenant_id: str, records: Sequence[VectorRecord]) -> None:
        """Stores (or replaces, by chunk id) `records` in the tenant's space."""
        ...

    async def query(
        self, tenant_id: str, vector: Sequence[float], top_k: int, where: VectorFilter
    ) -> list[VectorHit]:
        """The `top_k` nearest matching chunks of the tenant, closest first."""
        ...

    async def set_attributes(
        self,
        tenant_id: str,
        chunk_ids: Sequence[str],
        access_groups: Sequence[str],
        metadata: Mapping[str, str],
    ) -> None:
        """Replaces the groups and metadata of these chunks (a document's ACL or metadata changed)."""
        ...

    async def delete_chunks(self, tenant_id: str, chunk_ids: Sequence[str]) -> None:
        """Removes these chunks' vectors; missing ids are ignored."""
        ...

    async def delete_documents(self, tenant_id: str, document_ids: Sequence[str]) -> None:
        """Removes every vector of these documents."""
        ...

    async def delete_tenant(self, tenant_id: str) -> None:
        """Removes every vector of the tenant."""
        ...
