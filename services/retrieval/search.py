"""Query: vector search in the store, full-text search in PostgreSQL, fused by reciprocal rank.

Both searches get the tenant, the caller's groups and the metadata/document filters inside their own
query. Candidates are then read from the chunk rows with the same filters again, so a vector the store
still holds for a deleted, replaced or re-grouped chunk is never returned.

Scores in [0, 1]: vector = cosine similarity (clipped at 0); full text = rank / (rank + 1); hybrid =
the RRF sum divided by its maximum (first in both lists), so 1.0 means "top of both".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from parapet.embeddings import Embedder, EmbeddingUnavailable
from parapet.kit.database import Database
from parapet.kit.errors import Unavailable
from parapet.retrieval.v1 import chunk_pb2, citation_pb2
from parapet.retrieval.v1 import retrieval_service_pb2 as pb
from services.retrieval import repository
from services.retrieval.scope import tenant_scope
from services.retrieval.stores.protocol import VectorFilter, VectorStore, VectorStoreUnavailable

#: Reciprocal rank fusion constant (Cormack et al. 2009).
RRF_K = 60
#: Each list contributes this many candidates to the fusion at least.
MIN_CANDIDATES = 50


@dataclass(frozen=True)
class SearchRequest:
    tenant_id: str
    groups: tuple[str, ...]
    query: str
    top_k: int
    min_score: float
    mode: int
    metadata: Mapping[str, str]
    document_ids: tuple[str, ...]


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> list[tuple[str, float]]:
    """Ids by fused score, best first, scores normalised so being first in every ranking scores 1."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank + 1)
    best = len(rankings) / (k + 1)
    return sorted(((item, score / best) for item, score in scores.items()), key=lambda p: (-p[1], p[0]))


class Searcher:
    def __init__(self, database: Database, store: VectorStore, embedder: Embedder) -> None:
        self._database = database
        self._store = store
        self._embedder = embedder

    async def _vector(self, request: SearchRequest, limit: int) -> list[tuple[str, float]]:
        try:
            (vector,) = await self._embedder.embed([request.query])
            hits = await self._store.query(
                request.tenant_id,
                vector,
                limit,
                VectorFilter(request.groups, request.metadata, request.document_ids),
            )
        except EmbeddingUnavailable as error:
            raise Unavailable(f"embedding failed: {error}", reason="EMBEDDING_UNAVAILABLE") from error
        except VectorStoreUnavailable as error:
            raise Unavailable(f"vector store failed: {error}", reason="VECTOR_STORE_UNAVAILABLE") from error
        return [(h.chunk_id, max(0.0, min(1.0, h.similarity))) for h in hits]

    async def _full_text(self, request: SearchRequest, limit: int) -> list[tuple[str, float]]:
        async with tenant_scope(self._database, request.tenant_id) as session:
            ranked = await repository.full_text_search(
                session,
                request.tenant_id,
                request.query,
                limit,
                request.groups,
                request.metadata,
                request.document_ids,
            )
        return [(chunk_id, rank / (rank + 1.0)) for chunk_id, rank in ranked]

    async def search(self, request: SearchRequest) -> list[chunk_pb2.RetrievedChunk]:
        if request.mode == pb.SEARCH_MODE_VECTOR:
            scored = await self._vector(request, request.top_k)
        elif request.mode == pb.SEARCH_MODE_FULL_TEXT:
            scored = await self._full_text(request, request.top_k)
        else:
            limit = max(MIN_CANDIDATES, request.top_k * 2)
            vector = await self._vector(request, limit)
            full_text = await self._full_text(request, limit)
            scored = reciprocal_rank_fusion([[c for c, _ in vector], [c for c, _ in full_text]])
        scored = [(chunk_id, score) for chunk_id, score in scored if score >= request.min_score]
        if not scored:
            return []
        async with tenant_scope(self._database, request.tenant_id) as session:
            rows = await repository.fetch_chunks(
                session,
                request.tenant_id,
                [c for c, _ in scored[: request.top_k * 2]],
                request.groups,
                request.metadata,
                request.document_ids,
            )
        results = []
        for chunk_id, score in scored:
            row = rows.get(chunk_id)
            if row is None:
                continue
            results.append(
                chunk_pb2.RetrievedChunk(
                    text=row.text,
                    citation=citation_pb2.Citation(
                        document_id=row.document_id,
                        title=row.title,
                        source_uri=row.source_uri,
                        chunk_id=row.chunk_id,
                        start_offset=row.start_offset,
                        end_offset=row.end_offset,
                        score=score,
                    ),
                    metadata=row.metadata,
                )
            )
            if len(results) == request.top_k:
                break
        return results
