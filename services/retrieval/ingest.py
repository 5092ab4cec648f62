"""Ingesting one document: validate, extract, chunk, embed in batches, store; idempotent by content hash
and media type.

Order of writes, so a reader never sees a half-replaced document: (1) the new chunks' vectors go to the
vector store under new ids (ids derive from the content hash and media type, so nothing visible changes: a
query returns only chunks whose PostgreSQL row exists); (2) one transaction swaps the chunk rows and the
document row (and, for a replaced document, queues a DocumentsDeletedEvent with reason REPLACED); (3) the
old vectors are deleted. A crash between steps, or a failure of step 3 (logged, not the call's failure: the
document is stored), leaves only unreferenced vectors, never a mixed document.

An existing document is changed only by its owner or an admin, and only if they can read it
(`Writer.may_change`); anyone else gets one refusal, `DOCUMENT_NOT_WRITABLE`, whether they can read the
document or not.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from tokenizers import Tokenizer

from parapet.embeddings import Embedder, EmbeddingRejected, EmbeddingUnavailable, Vector, embed_own
from parapet.kit.database import Database
from parapet.kit.errors import (
    Aborted,
    InvalidArgument,
    ParapetError,
    PermissionDenied,
    Unavailable,
    to_status_proto,
)
from parapet.kit.identity import Principal
from parapet.kit.inbound import nul_field
from parapet.kit.permissions import ADMIN, has_permission
from parapet.retrieval.v1 import document_pb2
from parapet.retrieval.v1 import documents_deleted_event_pb2 as events_pb2
from parapet.retrieval.v1 import retrieval_service_pb2 as pb
from parapet.status.v1 import status_pb2
from services.retrieval import repository
from services.retrieval.chunking import Chunk, ChunkingOptions, chunk
from services.retrieval.deletion import forget_vectors
from services.retrieval.events import OutboxRelay, record_deletion
from services.retrieval.extract import MAX_TITLE_CHARS, Extracted, ExtractionError, extract, media_type
from services.retrieval.scope import tenant_scope
from services.retrieval.stores.protocol import (
    MAX_ATTRIBUTES_BYTES,
    PUBLIC_GROUP,
    VectorRecord,
    VectorStore,
    VectorStoreUnavailable,
    attributes_size,
    chunk_id_for,
    readable_by,
)

MAX_METADATA_ENTRIES = 64
#: Every citation of a document repeats its title (MAX_TITLE_CHARS, extraction's bound on a title it finds) and
#: its source URI (a query answer holds up to 100 citations).
MAX_SOURCE_URI_CHARS = 4096
_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")


@dataclass(frozen=True)
class _Attributes:
    """What a store write gave a document's vectors: which chunks, their groups and metadata (ids compared as
    a set: the chunk id query has no order)."""

    chunk_ids: frozenset[str]
    access_groups: tuple[str, ...]
    metadata: dict[str, str]

    @classmethod
    def of(cls, ids: Sequence[str], groups: Sequence[str], metadata: Mapping[str, str]) -> _Attributes:
        return cls(frozenset(ids), tuple(groups), dict(metadata))


class Rejected(Exception):
    """A document that cannot be ingested whatever is stored: INVALID_ARGUMENT naming the field."""

    def __init__(self, reason: str, message: str, field_name: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.field_name = field_name

    def to_error(self) -> InvalidArgument:
        return InvalidArgument(str(self), reason=self.reason, field_violations=[(self.field_name, str(self))])


def not_writable(document_id: str) -> PermissionDenied:
    """The one refusal for every id the caller may not change, whether it can read that document or not:
    it says the id is taken, and nothing of the document (its groups, owner or content)."""
    return PermissionDenied(
        f"document id {document_id!r} is taken by a document this caller may not change (only its owner "
        "or an admin, among those who can read it, may); choose another id",
        reason="DOCUMENT_NOT_WRITABLE",
        metadata={"document_id": document_id},
    )


@dataclass(frozen=True)
class Writer:
    """Who ingests: documents it creates are owned by `subject`."""

    tenant_id: str
    subject: str
    groups: tuple[str, ...] = ()
    admin: bool = False

    @classmethod
    def of(cls, principal: Principal) -> Writer:
        return cls(principal.tenant_id, principal.subject, principal.groups, has_permission(principal, ADMIN))

    def may_change(self, document: repository.DocumentRow) -> bool:
        """Only the owner, or an admin able to read it, decides a document's text, groups and metadata: a
        reader of a shared document could otherwise rewrite a colleague's text under their name, and an
        `ingest` caller outside its groups could overwrite or re-group it blind. The owner may whatever the
        groups: they supplied the text, so changing it discloses nothing (a pipeline that files documents
        under groups it is not in re-sends them)."""
        if document.owner_user_id == self.subject:
            return True
        return self.admin and readable_by(document.access_groups, self.groups)


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

    def record(self, result: pb.DocumentResult) -> None:
        """Counts a document's final result."""
        if result.outcome == pb.DOCUMENT_OUTCOME_REJECTED:
            self.rejected += 1
            return
        self.done += 1
        if result.outcome != pb.DOCUMENT_OUTCOME_UNCHANGED:
            self.chunks_stored += result.chunk_count


@dataclass(frozen=True)
class IngestOptions:
    max_document_bytes: int = 3 * 1024 * 1024
    chunking: ChunkingOptions = field(default_factory=ChunkingOptions)


# The most of a refused document's own text a result echoes back. Each result (and IngestDocuments' whole
# response) must stay within what a client receives (4 MiB by default): an invalid id or metadata key of a few
# MiB, echoed whole (twice: the field and the message), made the answer one no client could read.
_ECHO_CHARS = 512


def _shown(text: str) -> str:
    """``text`` quoted for a message, its first 64 characters only."""
    return repr(text) if len(text) <= 64 else repr(text[:64]) + "..."


def validate(document: document_pb2.Document, content: bytes, max_bytes: int) -> None:
    """Raises `Rejected` for a document that cannot be ingested whatever its content says."""
    with_nul = nul_field(document, "document.")
    if with_nul is not None:  # the kit leaves this check to us on ingestion: per document (app.py)
        where = with_nul[:_ECHO_CHARS]  # it names a map entry by its key, which may be megabytes long
        raise Rejected("DOCUMENT_METADATA_INVALID", f"{where} contains U+0000 (NUL)", where)
    document_id = document.document_id
    if not 1 <= len(document_id) <= 512 or any(unicodedata.category(c) == "Cc" for c in document_id):
        raise Rejected(
            "DOCUMENT_ID_INVALID",
            "document_id must be 1-512 characters without control characters",
            "document.document_id",
        )
    # Bounded so that a query answer of citations stays readable (a 1 MB title in each of 8 citations made an
    # 8 MB answer that no client with the default 4 MiB limit could read, for every reader of the document).
    if len(document.title) > MAX_TITLE_CHARS:
        raise Rejected(
            "DOCUMENT_METADATA_INVALID",
            f"title is longer than {MAX_TITLE_CHARS} characters",
            "document.title",
        )
    if len(document.source_uri) > MAX_SOURCE_URI_CHARS:
        raise Rejected(
            "DOCUMENT_METADATA_INVALID",
            f"source_uri is longer than {MAX_SOURCE_URI_CHARS} characters",
            "document.source_uri",
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
                f"document.metadata[{_shown(key)}]",
            )
    for group in document.access_groups:
        if not _NAME.match(group) or group == PUBLIC_GROUP:
            raise Rejected(
                "DOCUMENT_METADATA_INVALID",
                f"access group {_shown(group)} is invalid (1-256 printable characters, not {PUBLIC_GROUP!r})",
                "document.access_groups",
            )
    size = attributes_size(document_id, document.access_groups, document.metadata)
    if size > MAX_ATTRIBUTES_BYTES:
        raise Rejected(
            "DOCUMENT_METADATA_INVALID",
            f"document id, access groups and metadata take {size} bytes; at most {MAX_ATTRIBUTES_BYTES} go with"
            " each chunk's vector",
            "document.metadata",
        )
    if len(content) > max_bytes:
        raise Rejected(
            "DOCUMENT_TOO_LARGE", f"content is {len(content)} bytes; the limit is {max_bytes}", "content"
        )


def _rejection(index: int, document_id: str, error: ParapetError) -> pb.DocumentResult:
    status = to_status_proto(error)
    return pb.DocumentResult(
        index=index,
        document_id=document_id[:_ECHO_CHARS],
        outcome=pb.DOCUMENT_OUTCOME_REJECTED,
        error=status_pb2.Status.FromString(status.SerializeToString()),
    )


@dataclass
class Prepared:
    """A validated, extracted and chunked document waiting for its embeddings."""

    index: int
    document_id: str
    row: dict[str, Any]
    groups: list[str]
    metadata: dict[str, str]
    chunks: list[repository.NewChunk]


def _row(document: document_pb2.Document, content: bytes, owner: str) -> dict[str, Any]:
    """The document row to write, but for what extraction decides (title fallback, chunk count)."""
    return {
        "document_id": document.document_id,
        "title": document.title,
        "source_uri": document.source_uri,
        "mime_type": media_type(document.mime_type),
        "metadata": dict(document.metadata),
        "access_groups": sorted(set(document.access_groups)),
        "owner_user_id": owner,
        "content_sha256": hashlib.sha256(content).hexdigest(),
        "size_bytes": len(content),
    }


def _same_content(document: repository.DocumentRow, row: dict[str, Any]) -> bool:
    """Whether `row` would extract to the stored chunks: the media type decides the text as much as the
    bytes do (the same bytes as text/plain and as text/html are different documents)."""
    return (document.content_sha256, document.mime_type) == (row["content_sha256"], row["mime_type"])


def _content_key(row: dict[str, Any]) -> str:
    """What a document's chunk ids derive from: the content and its media type."""
    return f"{row['content_sha256']}:{row['mime_type']}"


def _attributes_changed(row: dict[str, Any], document: repository.DocumentRow) -> bool:
    return (row["title"], row["source_uri"], row["metadata"], row["access_groups"]) != (
        document.title,
        document.source_uri,
        document.metadata,
        sorted(document.access_groups),
    )


def _not_embeddable(document: Prepared, refused: Mapping[str, str]) -> pb.DocumentResult | None:
    """The rejection of a document with a chunk the embedder refuses (the same text is refused on every retry,
    so the document can never be stored as it is), or None when it has none."""
    reason = next((refused[c.text] for c in document.chunks if c.text in refused), None)
    if reason is None:
        return None
    message = (
        f"the embeddings provider refuses a chunk of this document ({reason}); change or split the content"
    )
    return _rejection(
        document.index,
        document.document_id,
        Rejected("DOCUMENT_NOT_EMBEDDABLE", message, "content").to_error(),
    )


def _store_unavailable(error: VectorStoreUnavailable) -> Unavailable:
    return Unavailable(f"vector store failed: {error}", reason="VECTOR_STORE_UNAVAILABLE")


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
        writer: Writer,
        index: int,
        document: document_pb2.Document,
        content: bytes,
        progress: Progress,
    ) -> pb.DocumentResult:
        """Ingests one document; a bad one gives a REJECTED result, an outage raises UNAVAILABLE."""
        prepared = await self.prepare(writer, index, document, content, progress)
        if isinstance(prepared, Prepared):
            (result,) = await self.store(writer, [prepared], progress)
            return result
        return prepared

    async def prepare(
        self,
        writer: Writer,
        index: int,
        document: document_pb2.Document,
        content: bytes,
        progress: Progress,
    ) -> Prepared | pb.DocumentResult:
        """A `Prepared` document, or its final result (rejected, or unchanged)."""
        progress.received += 1
        try:
            validate(document, content, self._options.max_document_bytes)
            prepared = await self._prepare(writer, index, document, content)
        except Rejected as error:
            prepared = _rejection(index, document.document_id, error.to_error())
        except ExtractionError as error:
            prepared = _rejection(
                index, document.document_id, Rejected(error.reason, str(error), "content").to_error()
            )
        except VectorStoreUnavailable as error:
            raise _store_unavailable(error) from error
        if isinstance(prepared, pb.DocumentResult):
            progress.record(prepared)
        return prepared

    async def store(
        self, writer: Writer, documents: list[Prepared], progress: Progress
    ) -> list[pb.DocumentResult]:
        """Embeds the chunks of `documents` in one call and stores each document; results in order."""
        documents, vectors, results = await self._embed(documents)
        for rejected in results:
            progress.record(rejected)
        records = [
            VectorRecord(c.chunk_id, d.document_id, v, tuple(d.groups), d.metadata)
            for (d, c), v in zip([(d, c) for d in documents for c in d.chunks], vectors, strict=True)
        ]
        try:
            # One upsert for the whole group: the vectors stay invisible until their chunk rows commit.
            await self._store.upsert(writer.tenant_id, records)
            for prepared in documents:
                result = await self._store_one(writer, prepared)
                progress.record(result)
                results.append(result)
        except VectorStoreUnavailable as error:
            raise _store_unavailable(error) from error
        return sorted(results, key=lambda r: r.index)

    async def _embed(
        self, documents: list[Prepared]
    ) -> tuple[list[Prepared], list[Vector], list[pb.DocumentResult]]:
        """The documents the embedder accepts, their chunks' vectors in order, and the rejections of the others
        (`_not_embeddable`); a refusal always names some of these documents' texts (`embed_own`)."""
        rejected: list[pb.DocumentResult] = []
        while True:
            try:
                vectors = await embed_own(self._embedder, [c.text for d in documents for c in d.chunks])
            except EmbeddingUnavailable as error:
                raise Unavailable(f"embedding failed: {error}", reason="EMBEDDING_UNAVAILABLE") from error
            except EmbeddingRejected as error:
                refusals = [(d, _not_embeddable(d, error.refused)) for d in documents]
                documents = [d for d, refusal in refusals if refusal is None]
                rejected += [refusal for _, refusal in refusals if refusal is not None]
                continue
            return documents, vectors, rejected

    def _extract_and_chunk(self, content: bytes, mime_type: str) -> tuple[Extracted, list[Chunk]]:
        extracted = extract(content, mime_type)
        return extracted, chunk(extracted, self._tokenizer, self._options.chunking)

    async def _prepare(
        self, writer: Writer, index: int, document: document_pb2.Document, content: bytes
    ) -> Prepared | pb.DocumentResult:
        row = _row(document, content, writer.subject)
        document_id = document.document_id
        async with tenant_scope(self._database, writer.tenant_id) as session:
            existing = await repository.get_document(session, writer.tenant_id, document_id)
        if existing is not None and not writer.may_change(existing):
            return _rejection(index, document_id, not_writable(document_id))
        if existing is not None and _same_content(existing, row):
            return await self._unchanged(writer.tenant_id, index, row, existing)
        extracted, chunks = await asyncio.to_thread(self._extract_and_chunk, content, row["mime_type"])
        row["title"] = row["title"] or extracted.title
        row["chunk_count"] = len(chunks)
        key = _content_key(row)
        new_chunks = [
            repository.NewChunk(chunk_id_for(document_id, key, c.ordinal), c.ordinal, c.text, c.start, c.end)
            for c in chunks
        ]
        return Prepared(index, document_id, row, row["access_groups"], row["metadata"], new_chunks)

    async def _store_one(self, writer: Writer, prepared: Prepared) -> pb.DocumentResult:
        """Swaps the document's chunk rows in one transaction (its vectors are already stored), unless a
        concurrent ingestion stored the id since `prepare` (`_lost_race`)."""
        tenant_id, document_id = writer.tenant_id, prepared.document_id
        async with tenant_scope(self._database, tenant_id) as session:
            current = await repository.get_document(session, tenant_id, document_id, lock=True)
            replaces = current is None or (
                writer.may_change(current) and not _same_content(current, prepared.row)
            )
            old_ids = await self._replace(session, writer, prepared, current) if replaces else []
        if current is not None and not replaces:
            return await self._lost_race(writer, prepared, current)
        stale = sorted(set(old_ids) - {c.chunk_id for c in prepared.chunks})
        if stale:
            await forget_vectors(tenant_id, self._store.delete_chunks(tenant_id, stale), "replaced chunks")
        if current is not None and self._relay is not None:
            self._relay.wake()
        return pb.DocumentResult(
            index=prepared.index,
            document_id=document_id,
            outcome=pb.DOCUMENT_OUTCOME_UPDATED if current is not None else pb.DOCUMENT_OUTCOME_CREATED,
            chunk_count=len(prepared.chunks),
        )

    async def _replace(
        self,
        session: AsyncSession,
        writer: Writer,
        prepared: Prepared,
        current: repository.DocumentRow | None,
    ) -> list[str]:
        """Writes the document and its chunk rows in the caller's transaction; returns the old chunk ids."""
        tenant_id, document_id = writer.tenant_id, prepared.document_id
        old_ids = await repository.chunk_ids(session, tenant_id, [document_id])
        await repository.write_document(session, tenant_id, prepared.row, prepared.chunks)
        if current is not None:
            await record_deletion(
                session,
                tenant_id,
                [document_id],
                events_pb2.DELETION_REASON_REPLACED,
                requested_by=writer.subject,
            )
        return old_ids

    async def _lost_race(
        self, writer: Writer, prepared: Prepared, current: repository.DocumentRow
    ) -> pb.DocumentResult:
        """Someone stored this id between `prepare` and `store`: the same content (ours is unchanged), or a
        document this writer may not change (refused). Our upserted vectors that no chunk row references
        are deleted; those it references (same content, same ids) were given our groups and metadata, which
        stand only if the writer may change the document: otherwise the stored ones are put back
        (`_reconcile`, which a one-off put-back of `current` is not: it can land after a newer change)."""
        tenant_id, document_id = writer.tenant_id, prepared.document_id
        async with tenant_scope(self._database, tenant_id) as session:
            referenced = set(await repository.chunk_ids(session, tenant_id, [document_id]))
        ours = [c.chunk_id for c in prepared.chunks]
        unreferenced = self._store.delete_chunks(tenant_id, [i for i in ours if i not in referenced])
        await forget_vectors(tenant_id, unreferenced, "an ingestion that lost a race")
        if writer.may_change(current):
            return await self._unchanged(tenant_id, prepared.index, prepared.row, current)
        if referenced.intersection(ours):
            await self._reconcile(tenant_id, document_id)
        return _rejection(prepared.index, document_id, not_writable(document_id))

    async def _unchanged(
        self, tenant_id: str, index: int, row: dict[str, Any], existing: repository.DocumentRow
    ) -> pb.DocumentResult:
        """Same content and media type: nothing is re-extracted or re-embedded; changed title, source,
        metadata or groups are applied. The owner stays: the text is still the one they gave."""
        wanted = row | {
            "title": row["title"] or existing.title,
            "owner_user_id": existing.owner_user_id,
            "chunk_count": existing.chunk_count,
        }
        if _attributes_changed(wanted, existing):
            await self._change_attributes(tenant_id, existing, wanted)
        return pb.DocumentResult(
            index=index,
            document_id=existing.document_id,
            outcome=pb.DOCUMENT_OUTCOME_UNCHANGED,
            chunk_count=existing.chunk_count,
        )

    async def _change_attributes(
        self, tenant_id: str, existing: repository.DocumentRow, row: dict[str, Any]
    ) -> None:
        """The vector store first, then the rows, then the store made to match the rows. Committing the rows
        first left the store stale for good when it then failed: the retry saw nothing to change. Now a failed
        store call commits nothing, so the retry sees the change again and makes it. The rows are written only
        if the document is still as read (else ABORTED: a concurrent change won, and a retry starts over
        from it). Either way the store is then reconciled with the committed rows (`_reconcile`): the first
        store write is made outside any lock, so another ingestion's can land after it, and ours after
        theirs; before, a loser's groups stayed in the store for good when it wrote after the winner."""
        document_id = existing.document_id
        async with tenant_scope(self._database, tenant_id) as session:
            ids = await repository.chunk_ids(session, tenant_id, [document_id])
        await self._store.set_attributes(tenant_id, ids, row["access_groups"], row["metadata"])
        written = _Attributes.of(ids, row["access_groups"], row["metadata"])
        try:
            await self._commit_attributes(tenant_id, existing, row)
        except Aborted:
            await self._reconcile(tenant_id, document_id, written)
            raise
        await self._reconcile(tenant_id, document_id, written)

    async def _commit_attributes(
        self, tenant_id: str, existing: repository.DocumentRow, row: dict[str, Any]
    ) -> None:
        """Writes `row` (attributes only) if the document is still `existing`, else raises ABORTED. Its
        `update_time` moves on every write, so an equal row is an unchanged one, never a changed-back one."""
        document_id = existing.document_id
        async with tenant_scope(self._database, tenant_id) as session:
            current = await repository.get_document(session, tenant_id, document_id, lock=True)
            if current != existing:
                raise Aborted(
                    f"document {document_id!r} changed during this ingestion; retry",
                    reason="CONCURRENT_CONFLICT",
                )
            await repository.write_document(session, tenant_id, row, None)

    async def _committed(
        self, tenant_id: str, document_id: str
    ) -> tuple[repository.DocumentRow, list[str]] | None:
        """The document's committed row and chunk ids (None once deleted: deletion removes its vectors)."""
        async with tenant_scope(self._database, tenant_id) as session:
            current = await repository.get_document(session, tenant_id, document_id)
            ids = await repository.chunk_ids(session, tenant_id, [document_id]) if current else []
        return (current, ids) if current is not None else None

    async def _reconcile(self, tenant_id: str, document_id: str, written: _Attributes | None = None) -> None:
        """Gives the document's vectors the groups and metadata of its committed row, again until the row did
        not change while the store was written.

        Why that leaves the store in step with the rows under any interleaving, without holding the row lock
        across the store call (which would hold a pooled connection while the pgvector store waits for another
        from the same pool): every writer of a stored document's vector attributes reconciles after its last
        write (`_change_attributes` on both outcomes, `_lost_race`), but for an upsert whose groups and metadata
        the row read after it holds anyway (`_lost_race` with nothing to change). Take the last store write: its
        writer read the row before it and again after it and found them equal (else it would write again), so
        the store holds the row as it stood after that write; a later commit would be followed by its own
        writer's reconciling write, which would then be the last. A one-off put-back (one read, one write) is
        not enough: a change committed between the read and the write is overwritten with the older row."""
        seen = await self._committed(tenant_id, document_id)
        while seen is not None:
            current, ids = seen
            if written is not None and written == _Attributes.of(
                ids, current.access_groups, current.metadata
            ):
                # What this writer's own last store write already holds: writing it again would change nothing
                # (another writer's later store write is followed by that writer's own reconciling).
                return
            await self._store.set_attributes(tenant_id, ids, current.access_groups, current.metadata)
            written = _Attributes.of(ids, current.access_groups, current.metadata)
            again = await self._committed(tenant_id, document_id)
            if again == seen:
                return
            seen = again
