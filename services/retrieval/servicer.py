"""RetrievalService: request validation, permissions and the principal's tenant; the work is elsewhere."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from parapet.kit import paging
from parapet.kit.context import require_principal
from parapet.kit.database import Database
from parapet.kit.errors import InvalidArgument
from parapet.kit.identity import Principal
from parapet.kit.permissions import erasure_target, require_permission
from parapet.kit.timeouts import within
from parapet.retrieval.v1 import document_pb2, retrieval_service_pb2_grpc
from parapet.retrieval.v1 import retrieval_service_pb2 as pb
from services.retrieval import repository
from services.retrieval.deletion import Deleter
from services.retrieval.extract import has_visible_text
from services.retrieval.ingest import Ingestor, Prepared, Progress, Writer
from services.retrieval.limits import MAX_QUERY_CHARS, MAX_QUERY_DOCUMENT_IDS, MAX_QUERY_FILTER_ENTRIES
from services.retrieval.permissions import DOCUMENTS_DELETE, DOCUMENTS_READ, INGEST
from services.retrieval.scope import tenant_scope
from services.retrieval.search import Searcher, SearchRequest

DEFAULT_TOP_K = 8
MAX_TOP_K = 100
PROGRESS_INTERVAL_SECONDS = 1.0
#: IngestDocuments embeds prepared documents together once they hold this many chunks (or documents).
BATCH_CHUNKS = 64
BATCH_DOCUMENTS = 32
# IngestDocuments answers once, with a result per document: past this many the answer could outgrow what a
# client receives (4 MiB by default; a result takes up to about 1.5 KB). StreamIngestDocuments has no limit.
MAX_DOCUMENTS_PER_CALL = 2000


def _document_proto(row: repository.DocumentRow) -> document_pb2.Document:
    document = document_pb2.Document(
        document_id=row.document_id,
        title=row.title,
        source_uri=row.source_uri,
        mime_type=row.mime_type,
        metadata=row.metadata,
        access_groups=row.access_groups,
        owner_user_id=row.owner_user_id,
        content_sha256=row.content_sha256,
        size_bytes=row.size_bytes,
        chunk_count=row.chunk_count,
    )
    document.create_time.FromDatetime(row.create_time)
    document.update_time.FromDatetime(row.update_time)
    return document


class RetrievalServicer(retrieval_service_pb2_grpc.RetrievalServiceServicer):
    def __init__(self, database: Database, ingestor: Ingestor, searcher: Searcher, deleter: Deleter) -> None:
        self._database = database
        self._ingestor = ingestor
        self._searcher = searcher
        self._deleter = deleter

    def _caller(self, permission: str) -> Principal:
        principal = require_principal()
        require_permission(principal, permission)
        return principal

    async def IngestDocuments(
        self, request_iterator: AsyncIterator[pb.IngestDocumentsRequest], context: grpc.aio.ServicerContext
    ) -> pb.IngestDocumentsResponse:
        writer = Writer.of(self._caller(INGEST))
        progress = Progress()
        results: list[pb.DocumentResult] = []
        # Small documents share embedding batches: the model is much faster on 32 texts at once.
        pending: list[Prepared] = []
        index = 0
        async for request in request_iterator:
            if index == MAX_DOCUMENTS_PER_CALL:
                if pending:
                    await self._ingestor.store(writer, pending, progress)  # what was read is ingested
                raise InvalidArgument(
                    f"IngestDocuments takes at most {MAX_DOCUMENTS_PER_CALL} documents: the first "
                    f"{MAX_DOCUMENTS_PER_CALL} were processed (stored or refused; sent again, the stored ones "
                    "are unchanged), but their results cannot come with this error. Use "
                    "StreamIngestDocuments, which reports each document as it goes",
                    reason="TOO_MANY_DOCUMENTS",
                    metadata={"max_documents": str(MAX_DOCUMENTS_PER_CALL)},
                )
            if any(p.document_id == request.document.document_id for p in pending):
                # A later version of a waiting document: prepared now, it would be compared with the rows as
                # they stand without the earlier version (answered UNCHANGED when it matched the stored text,
                # then overwritten by the earlier one; or its vectors deleted by the earlier one's replacement).
                results += await self._ingestor.store(writer, pending, progress)
                pending = []
            prepared = await self._ingestor.prepare(
                writer, index, request.document, request.content, progress
            )
            index += 1
            if not isinstance(prepared, Prepared):
                results.append(prepared)
                continue
            pending.append(prepared)
            if sum(len(p.chunks) for p in pending) >= BATCH_CHUNKS or len(pending) >= BATCH_DOCUMENTS:
                results += await self._ingestor.store(writer, pending, progress)
                pending = []
        if pending:
            results += await self._ingestor.store(writer, pending, progress)
        results.sort(key=lambda r: r.index)
        return pb.IngestDocumentsResponse(results=results, progress=progress.to_proto())

    async def StreamIngestDocuments(
        self,
        request_iterator: AsyncIterator[pb.StreamIngestDocumentsRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.StreamIngestDocumentsResponse]:
        writer = Writer.of(self._caller(INGEST))
        progress = Progress()
        outbox: asyncio.Queue[pb.StreamIngestDocumentsResponse | BaseException | None] = asyncio.Queue()

        async def work() -> None:
            try:
                index = 0
                async for request in request_iterator:
                    result = await self._ingestor.ingest(
                        writer, index, request.document, request.content, progress
                    )
                    outbox.put_nowait(pb.StreamIngestDocumentsResponse(result=result))
                    index += 1
                outbox.put_nowait(None)
            except BaseException as error:  # handed to the response stream, which raises it
                outbox.put_nowait(error)

        worker = asyncio.create_task(work())
        try:
            while True:
                try:
                    item = await within(PROGRESS_INTERVAL_SECONDS, outbox.get())
                except TimeoutError:
                    yield pb.StreamIngestDocumentsResponse(progress=progress.to_proto())
                    continue
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
            yield pb.StreamIngestDocumentsResponse(progress=progress.to_proto())
        finally:
            worker.cancel()

    async def Query(self, request: pb.QueryRequest, context: grpc.aio.ServicerContext) -> pb.QueryResponse:
        principal = self._caller(DOCUMENTS_READ)
        violations = []
        if not request.query.strip():
            violations.append(("query", "must not be empty"))
        elif len(request.query) > MAX_QUERY_CHARS:
            violations.append(("query", f"at most {MAX_QUERY_CHARS} characters"))
        elif not has_visible_text(request.query):
            # As in a document (DOCUMENT_EMPTY): zero-width, format and control characters are no text, and
            # vector search would rank every chunk against a question the model reads as no word piece.
            violations.append(("query", "must have visible text, not only zero-width or control characters"))
        if not 0 <= request.top_k <= MAX_TOP_K:
            violations.append(("top_k", f"must be between 0 and {MAX_TOP_K}"))
        if not 0.0 <= request.min_score <= 1.0:
            violations.append(("min_score", "must be in [0, 1]"))
        if len(request.document_ids) > MAX_QUERY_DOCUMENT_IDS:
            violations.append(("document_ids", f"at most {MAX_QUERY_DOCUMENT_IDS} documents"))
        if len(request.metadata_filter) > MAX_QUERY_FILTER_ENTRIES:
            violations.append(("metadata_filter", f"at most {MAX_QUERY_FILTER_ENTRIES} entries"))
        if violations:
            raise InvalidArgument("invalid query", field_violations=violations)
        chunks = await self._searcher.search(
            SearchRequest(
                tenant_id=principal.tenant_id,
                groups=principal.groups,
                query=request.query,
                top_k=request.top_k or DEFAULT_TOP_K,
                min_score=request.min_score,
                mode=request.mode,
                metadata=dict(request.metadata_filter),
                document_ids=tuple(request.document_ids),
            )
        )
        return pb.QueryResponse(chunks=chunks)

    async def DeleteDocument(
        self, request: pb.DeleteDocumentRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteDocumentResponse:
        principal = self._caller(DOCUMENTS_DELETE)
        if not request.document_id:
            raise InvalidArgument(
                "document_id is required", field_violations=[("document_id", "must not be empty")]
            )
        deleted = await self._deleter.delete_document(
            principal.tenant_id,
            principal.groups,
            principal.subject,
            request.document_id,
            request.allow_missing,
        )
        return pb.DeleteDocumentResponse(deleted=deleted)

    async def DeleteDocuments(
        self, request: pb.DeleteDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteDocumentsResponse:
        principal = self._caller(DOCUMENTS_DELETE)
        owner = erasure_target(principal, request, everything="all_documents", what="documents")
        count = await self._deleter.erase(principal.tenant_id, principal.subject, owner)
        return pb.DeleteDocumentsResponse(deleted_count=count)

    async def ListDocuments(
        self, request: pb.ListDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDocumentsResponse:
        principal = self._caller(DOCUMENTS_READ)
        size = paging.page_size(request.page_size, default=50)
        # Bound to the caller too: which documents a page holds depends on the caller's groups.
        query = paging.query_key(request, principal.tenant_id, principal.subject)
        after = paging.decode_text(request.page_token, query) or ""
        async with tenant_scope(self._database, principal.tenant_id) as session:
            rows = await repository.list_documents(
                session,
                principal.tenant_id,
                principal.groups,
                after=after,
                limit=size + 1,
                owner_user_id=request.owner_user_id,
                metadata=dict(request.metadata_filter),
            )
        page = rows[:size]
        next_token = paging.encode([page[-1].document_id], query) if len(rows) > size else ""
        return pb.ListDocumentsResponse(
            documents=[_document_proto(r) for r in page], next_page_token=next_token
        )
