"""Query: vector search in the store, full-text search in PostgreSQL, fused by reciprocal rank.

Both searches get the tenant, the caller's groups and the metadata/document filters inside their own
query. Candidates are then read from the chunk rows with the same filters again, so a vector the store
still holds for a deleted, replaced or re-grouped chunk is never returned.

The store may hold vectors no chunk row references (a replacement's not yet committed, the garbage of a failed
delete), and they take places in its answer. Vector search therefore asks the store for a few more hits than
`top_k` and, if the re-check still leaves fewer than `top_k`, asks again for twice as many, until it has
`top_k` live hits or the store has no more (`_vector_results`). Until 2026-12-06 it asked for exactly `top_k`,
and every stale hit was one result fewer.

Scores in [0, 1]: vector = cosine similarity (clipped at 0); full text = rank / (rank + 1); hybrid =
the RRF sum divided by its maximum (first in both lists), so 1.0 means "top of both".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from parapet.embeddings import Embedder, EmbeddingRejected, EmbeddingUnavailable, embed_own
from parapet.kit.database import Database
from parapet.kit.errors import InvalidArgument, Unavailable
from parapet.retrieval.v1 import chunk_pb2, citation_pb2
from parapet.retrieval.v1 import retrieval_service_pb2 as pb
from services.retrieval import repository
from services.retrieval.scope import tenant_scope
from services.retrieval.stores.protocol import VectorFilter, VectorStore, VectorStoreUnavailable

#: Reciprocal rank fusion constant (Cormack et al. 2009).
RRF_K = 60
#: Each list contributes this many candidates to the fusion at least.
MIN_CANDIDATES = 50
#: Vector search first asks the store for top_k plus a quarter (at least 2) more. Stale hits are rare (only
#: during a replacement or after a failed delete), so the margin is small: with hnsw.ef_search 800 the first
#: scan round already holds 800 candidates (about 16 pass the benchmark's 2% filter), so a LIMIT of 12 instead
#: of 10 rarely adds a round and costs the few more rows read; hybrid mode asks for 50 on every query anyway.
MIN_VECTOR_MARGIN = 2
#: A query asks the store for at most this many hits: past it, it returns fewer than top_k (only when
#: hundreds of stale vectors are nearer than the live ones).
MAX_VECTOR_CANDIDATES = 1000


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
            (vector,) = await embed_own(self._embedder, [request.query])
            hits = await self._store.query(
                request.tenant_id,
                vector,
                limit,
                VectorFilter(request.groups, request.metadata, request.document_ids),
            )
        except EmbeddingUnavailable as error:
            raise Unavailable(f"embedding failed: {error}", reason="EMBEDDING_UNAVAILABLE") from error
        except EmbeddingRejected as error:
            # The provider will never embed this question (longer than its model reads): the caller's to change.
            reason = error.refused[request.query]
            message = f"the embeddings provider refuses this query ({reason})"
            raise InvalidArgument(
                message, reason="QUERY_NOT_EMBEDDABLE", field_violations=[("query", message)]
            ) from error
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
            return await self._vector_results(request)
        if request.mode == pb.SEARCH_MODE_FULL_TEXT:
            scored = await self._full_text(request, request.top_k)
        else:
            limit = max(MIN_CANDIDATES, request.top_k * 2)
            vector = await self._vector(request, limit)
            full_text = await self._full_text(request, limit)
            scored = reciprocal_rank_fusion([[c for c, _ in vector], [c for c, _ in full_text]])
        return await self._live(request, scored)

    async def _vector_results(self, request: SearchRequest) -> list[chunk_pb2.RetrievedChunk]:
        """The top_k live vector hits: asks the store again for twice as many while stale hits (dropped by the
        re-check) leave fewer and the store may hold more (it filled the limit, all above `min_score`)."""
        limit = request.top_k + max(MIN_VECTOR_MARGIN, request.top_k // 4)
        while True:
            scored = await self._vector(request, limit)
            results = await self._live(request, scored)
            exhausted = len(scored) < limit or (bool(scored) and scored[-1][1] < request.min_score)
            if len(results) == request.top_k or exhausted or limit >= MAX_VECTOR_CANDIDATES:
                return results
            limit = min(limit * 2, MAX_VECTOR_CANDIDATES)

    async def _live(
        self, request: SearchRequest, scored: list[tuple[str, float]]
    ) -> list[chunk_pb2.RetrievedChunk]:
        """The first top_k of `scored` (best first, at least `min_score`) whose chunk rows exist and pass the
        filters again, read 2 x top_k at a time until top_k are found (stale hits have no row)."""
        candidates = [(chunk_id, score) for chunk_id, score in scored if score >= request.min_score]
        window = request.top_k * 2
        results: list[chunk_pb2.RetrievedChunk] = []
        for start in range(0, len(candidates), window):
            part = candidates[start : start + window]
            rows = await self._rows(request, [chunk_id for chunk_id, _ in part])
            results += [_retrieved(rows[c], score) for c, score in part if c in rows]
            if len(results) >= request.top_k:
                break
        return results[: request.top_k]

    async def _rows(self, request: SearchRequest, chunk_ids: list[str]) -> Mapping[str, repository.ChunkRow]:
        async with tenant_scope(self._database, request.tenant_id) as session:
            return await repository.fetch_chunks(
                session, request.tenant_id, chunk_ids, request.groups, request.metadata, request.document_ids
            )


def _retrieved(row: repository.ChunkRow, score: float) -> chunk_pb2.RetrievedChunk:
    return chunk_pb2.RetrievedChunk(
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
