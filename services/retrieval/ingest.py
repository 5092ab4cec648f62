"""Ingesting one document: validate, extract, chunk, embed in batches, store; idempotent by content hash.

Order of writes, so a reader never sees a half-replaced document: (1) the new chunks' vectors go to the
vector store under new ids (ids derive from the content hash, so nothing visible changes: a query returns
only chunks whose PostgreSQL row exists); (2) one transaction swaps the chunk rows and the document row
(and, for a replaced document, queues a DocumentsDeletedEvent with reason REPLACED); (3) the old vectors
are deleted. A crash between steps leaves only unreferenced vectors, never a mixed document.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field

from tokenizers import Tokenizer

from parapet.embeddings import Embedder, EmbeddingUnavailable
from parapet.kit.database import Database
from parapet.kit.errors import InvalidArgument, Unavailable, to_status_proto
from parapet.kit.inbound import nul_field
from parapet.retrieval.v1 import document_pb2
from parapet.retrieval.v1 import documents_deleted_event_pb2 as events_pb2
from parapet.retrieval.v1 import retrieval_service_pb2 as pb
from parapet.status.v1 import status_pb2
from services.retrieval import repository
from services.retrieval.chunking import Chunk, ChunkingOptions, chunk
from services.retrieval.events import OutboxRelay, record_deletion
from services.retrieval.extract import Extracted, ExtractionError, extract
from services.retrieval.scope import tenant_scope
from services.retrieval.stores.protocol import (
    PUBLIC_GROUP,
    VectorRecord,
    VectorStore,
    VectorStoreUnavailable,
    chunk_id_for,
)

MAX_METADATA_ENTRIES = 64
_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")


class Rejected(Exception):
    def __init__(self, reason: str, message: str, field_name: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.field_name = field_name


@dataclass
class Progress:
    received: int = 0
    done: int = 0
    rejected: int = 0
    chunks_stored: int = 0

    def to_proto(self) -> pb.IngestProgress:
        return pb.IngestProgress(
            documents_received=self.received,
            documents_done=self.done,
            documents_rejected=self.rejected,
            chunks_stored=self.chunks_stored,
        )


@dataclass(frozen=True)
class IngestOptions:
    max_document_bytes: int = 3 * 1024 * 1024
    chunking: ChunkingOptions = field(default_factory=ChunkingOptions)


def validate(document: document_pb2.Document, content: bytes, max_bytes: int) -> None:
    """Raises `Rejected` for a document that cannot be ingested whatever its content says."""
    with_nul = nul_field(document, "document.")
    if with_nul is not None:  # the kit leaves this check to us on ingestion: per document (app.py)
        raise Rejected("DOCUMENT_METADATA_INVALID", f"{with_nul} contains U+0000 (NUL)", with_nul)
    document_id = document.document_id
    if not 1 <= len(document_id) <= 512 or any(unicodedata.category(c) == "Cc" for c in document_id):
        raise Rejected(
            "DOCUMENT_ID_INVALID",
            "document_id must be 1-512 characters without control characters",
            "document.document_id",
        )
    if len(document.metadata) > MAX_METADATA_ENTRIES:
        raise Rejected(
            "DOCUMENT_METADATA_INVALID",
            f"at most {MAX_METADATA_ENTRIES} metadata entries",
            "document.metadata",
        )
    for key, value in document.metadata.items():
        if not _NAME.match(key) or len(value) > 1024:
            raise Rejected(
                "DOCUMENT_METADATA_INVALID",
                "metadata keys must be 1-256 printable characters and values at most 1024",
                f"document.metadata[{key!r}]",
            )
    for group in document.access_groups:
        if not _NAME.match(group) or group == PUBLIC_GROUP:
            raise Rejected(
                "DOCUMENT_METADATA_INVALID",
                f"access group {group!r} is invalid (1-256 printable characters, not {PUBLIC_GROUP!r})",
                "document.access_groups",
            )
    if len(content) > max_bytes:
        raise Rejected(
            "DOCUMENT_TOO_LARGE", f"content is {len(content)} bytes; the limit is {max_bytes}", "content"
        )


def _rejection(index: int, document_id: str, error: Rejected) -> pb.DocumentResult:
    status = to_status_proto(
        InvalidArgument(str(error), reason=error.reason, field_violations=[(error.field_name, str(error))])
    )
    return pb.DocumentResult(
        index=index,
        document_id=document_id,
        outcome=pb.DOCUMENT_OUTCOME_REJECTED,
        error=status_pb2.Status.FromString(status.SerializeToString()),
    )


@dataclass
class Prepared:
    """A validated, extracted and chunked document waiting for its embeddings."""

    index: int
    document_id: str
    row: dict[str, object]
    groups: list[str]
    metadata: dict[str, str]
    chunks: list[repository.NewChunk]


class Ingestor:
    """Ingestion in two steps, so a stream's small documents share embedding batches: `prepare` each
    document (validate, hash, extract, chunk; rejections and unchanged documents finish here), then
    `store` a group of prepared documents (one embedding call for all their chunks, then per document the
    vector upsert and the atomic replacement)."""

    def __init__(
        self,
        database: Database,
        store: VectorStore,
        embedder: Embedder,
        tokenizer: Tokenizer,
        relay: OutboxRelay | None,
        options: IngestOptions | None = None,
    ) -> None:
        self._database = database
        self._store = store
        self._embedder = embedder
        self._tokenizer = tokenizer
        self._relay = relay
        self._options = options or IngestOptions()

    async def ingest(
        self,
        tenant_id: str,
        owner: str,
        index: int,
        document: document_pb2.Document,
        content: bytes,
        progress: Progress,
    ) -> pb.DocumentResult:
        """Ingests one document; a bad one gives a REJECTED result, an outage raises UNAVAILABLE."""
        prepared = await self.prepare(tenant_id, owner, index, document, content, progress)
        if isinstance(prepared, Prepared):
            (result,) = await self.store(tenant_id, owner, [prepared], progress)
            return result
        return prepared

    async def prepare(
        self,
        tenant_id: str,
        owner: str,
        index: int,
        document: document_pb2.Document,
        content: bytes,
        progress: Progress,
    ) -> Prepared | pb.DocumentResult:
        """A `Prepared` document, or its final result (rejected, or unchanged)."""
        progress.received += 1
        try:
            validate(document, content, self._options.max_document_bytes)
            prepared = await self._prepare(tenant_id, owner, index, document, content)
        except Rejected as error:
            progress.rejected += 1
            return _rejection(index, document.document_id, error)
        except ExtractionError as error:
            progress.rejected += 1
            return _rejection(index, document.document_id, Rejected(error.reason, str(error), "content"))
        except VectorStoreUnavailable as error:
            raise Unavailable(f"vector store failed: {error}", reason="VECTOR_STORE_UNAVAILABLE") from error
        if isinstance(prepared, pb.DocumentResult):
            progress.done += 1
        return prepared

    async def store(
        self, tenant_id: str, owner: str, documents: list[Prepared], progress: Progress
    ) -> list[pb.DocumentResult]:
        """Embeds the chunks of `documents` in one call and stores each document; results in order."""
        texts = [c.text for d in documents for c in d.chunks]
        try:
            vectors = await self._embedder.embed(texts)
        except EmbeddingUnavailable as error:
            raise Unavailable(f"embedding failed: {error}", reason="EMBEDDING_UNAVAILABLE") from error
        records = [
            VectorRecord(c.chunk_id, d.document_id, v, tuple(d.groups), d.metadata)
            for d, c, v in zip(
                [d for d in documents for _ in d.chunks],
                [c for d in documents for c in d.chunks],
                vectors,
                strict=True,
            )
        ]
        results = []
        try:
            # One upsert for the whole group: the vectors stay invisible until their chunk rows commit.
            await self._store.upsert(tenant_id, records)
        except VectorStoreUnavailable as error:
            raise Unavailable(f"vector store failed: {error}", reason="VECTOR_STORE_UNAVAILABLE") from error
        for prepared in documents:
            try:
                result = await self._store_one(tenant_id, owner, prepared)
            except VectorStoreUnavailable as error:
                raise Unavailable(
                    f"vector store failed: {error}", reason="VECTOR_STORE_UNAVAILABLE"
                ) from error
            progress.done += 1
            if result.outcome != pb.DOCUMENT_OUTCOME_UNCHANGED:
                progress.chunks_stored += result.chunk_count
            results.append(result)
        return results

    def _extract_and_chunk(self, content: bytes, mime_type: str) -> tuple[Extracted, list[Chunk]]:
        extracted = extract(content, mime_type)
        return extracted, chunk(extracted, self._tokenizer, self._options.chunking)

    async def _prepare(
        self, tenant_id: str, owner: str, index: int, document: document_pb2.Document, content: bytes
    ) -> Prepared | pb.DocumentResult:
        sha = hashlib.sha256(content).hexdigest()
        groups = sorted(set(document.access_groups))
        metadata = dict(document.metadata)
        row: dict[str, object] = {
            "document_id": document.document_id,
            "title": document.title,
            "source_uri": document.source_uri,
            "mime_type": document.mime_type.split(";", 1)[0].strip().lower(),
            "metadata": metadata,
            "access_groups": groups,
            "owner_user_id": owner,
            "content_sha256": sha,
            "size_bytes": len(content),
        }
        async with tenant_scope(self._database, tenant_id) as session:
            existing = await repository.lock_document(session, tenant_id, document.document_id)
        if existing is not None and existing.content_sha256 == sha:
            return await self._unchanged(tenant_id, index, row, existing)
        extracted, chunks = await asyncio.to_thread(self._extract_and_chunk, content, document.mime_type)
        row["title"] = row["title"] or extracted.title
        row["chunk_count"] = len(chunks)
        new_chunks = [
            repository.NewChunk(
                chunk_id_for(document.document_id, sha, c.ordinal), c.ordinal, c.text, c.start, c.end
            )
            for c in chunks
        ]
        return Prepared(index, document.document_id, row, groups, metadata, new_chunks)

    async def _store_one(self, tenant_id: str, owner: str, prepared: Prepared) -> pb.DocumentResult:
        """Swaps the document's chunk rows in one transaction (its vectors are already stored)."""
        document_id = prepared.document_id
        async with tenant_scope(self._database, tenant_id) as session:
            current = await repository.lock_document(session, tenant_id, document_id)
            if current is not None and current.content_sha256 == prepared.row["content_sha256"]:
                # A concurrent ingestion of the same content won; our vectors have the same ids.
                return pb.DocumentResult(
                    index=prepared.index,
                    document_id=document_id,
                    outcome=pb.DOCUMENT_OUTCOME_UNCHANGED,
                    chunk_count=current.chunk_count,
                )
            old_ids = await repository.chunk_ids(session, tenant_id, [document_id])
            await repository.write_document(session, tenant_id, prepared.row, prepared.chunks)
            if current is not None:
                await record_deletion(
                    session, tenant_id, [document_id], events_pb2.DELETION_REASON_REPLACED, requested_by=owner
                )
        stale = sorted(set(old_ids) - {c.chunk_id for c in prepared.chunks})
        if stale:
            await self._store.delete_chunks(tenant_id, stale)
        if current is not None and self._relay is not None:
            self._relay.wake()
        return pb.DocumentResult(
            index=prepared.index,
            document_id=document_id,
            outcome=pb.DOCUMENT_OUTCOME_UPDATED if current is not None else pb.DOCUMENT_OUTCOME_CREATED,
            chunk_count=len(prepared.chunks),
        )

    async def _unchanged(
        self, tenant_id: str, index: int, row: dict[str, object], existing: repository.DocumentRow
    ) -> pb.DocumentResult:
        """Same content: nothing is re-embedded; changed title, metadata or groups are applied."""
        row["chunk_count"] = existing.chunk_count
        row["title"] = row["title"] or existing.title
        row["owner_user_id"] = existing.owner_user_id
        changed = (
            row["title"] != existing.title
            or row["source_uri"] != existing.source_uri
            or row["metadata"] != existing.metadata
            or row["access_groups"] != sorted(existing.access_groups)
        )
        if changed:
            groups: list[str] = row["access_groups"]  # type: ignore[assignment]
            metadata: dict[str, str] = row["metadata"]  # type: ignore[assignment]
            async with tenant_scope(self._database, tenant_id) as session:
                await repository.write_document(session, tenant_id, row, None)
                ids = await repository.chunk_ids(session, tenant_id, [existing.document_id])
            # The chunk rows (checked on every query) changed in the transaction; the store follows.
            await self._store.set_attributes(tenant_id, ids, groups, metadata)
        return pb.DocumentResult(
            index=index,
            document_id=existing.document_id,
            outcome=pb.DOCUMENT_OUTCOME_UNCHANGED,
            chunk_count=existing.chunk_count,
        )
