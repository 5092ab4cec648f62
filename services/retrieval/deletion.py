"""Deleting documents: chunk rows, document rows and the DocumentsDeletedEvent commit together; the
vectors are deleted right after. From the commit on no query returns the chunks (queries read chunk
rows), so the deletion is visible at once even while the vector store catches up."""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from parapet.kit.database import Database
from parapet.kit.errors import NotFound
from parapet.retrieval.v1 import documents_deleted_event_pb2 as events_pb2
from services.retrieval import repository
from services.retrieval.events import MAX_IDS_PER_EVENT, OutboxRelay, record_deletion
from services.retrieval.scope import tenant_scope
from services.retrieval.stores.protocol import VectorStore

log = logging.getLogger(__name__)


async def forget_vectors(tenant_id: str, removal: Awaitable[None], what: str) -> None:
    """Awaits `removal`, the deletion of vectors whose chunk rows are gone in a committed transaction. If it fails
    they stay as garbage, logged, and the caller goes on: no query returns them (queries re-check the chunk rows,
    and vector search asks the store for more until it has enough live hits, search.py), and what the caller did
    is committed, so reporting it failed would be false (a retry of a replaced document found it UNCHANGED)."""
    try:
        await removal
    except Exception:  # whatever the store raised: the outcome is committed, the vectors are only garbage
        log.warning("vectors of %s not removed", what, exc_info=True, extra={"tenant": tenant_id})


class Deleter:
    def __init__(self, database: Database, store: VectorStore, relay: OutboxRelay | None) -> None:
        self._database = database
        self._store = store
        self._relay = relay

    async def _forget_vectors(
        self, tenant_id: str, document_ids: list[str], *, whole_tenant: bool = False
    ) -> None:
        removal = (
            self._store.delete_tenant(tenant_id)
            if whole_tenant
            else self._store.delete_documents(tenant_id, document_ids)
        )
        await forget_vectors(tenant_id, removal, "deleted documents")

    async def delete_document(
        self,
        tenant_id: str,
        groups: tuple[str, ...],
        requested_by: str,
        document_id: str,
        allow_missing: bool,
    ) -> bool:
        async with tenant_scope(self._database, tenant_id) as session:
            # A document outside the caller's groups is "not found": its existence is not revealed.
            readable = await repository.readable_document(session, tenant_id, document_id, groups)
            deleted = (
                await repository.delete_documents(session, tenant_id, document_ids=[document_id])
                if readable
                else []
            )
            if deleted:
                await record_deletion(
                    session,
                    tenant_id,
                    deleted,
                    events_pb2.DELETION_REASON_DOCUMENT_DELETED,
                    requested_by=requested_by,
                )
        if not deleted:
            if allow_missing:
                return False
            raise NotFound(f"document {document_id!r} not found", reason="DOCUMENT_NOT_FOUND")
        await self._forget_vectors(tenant_id, deleted)
        if self._relay is not None:
            self._relay.wake()
        return True

    async def erase(self, tenant_id: str, requested_by: str, owner_user_id: str | None) -> int:
        """Deletes every document of `owner_user_id` (or of the tenant when None), 1000 per transaction."""
        reason = (
            events_pb2.DELETION_REASON_TENANT_ERASURE
            if owner_user_id is None
            else events_pb2.DELETION_REASON_USER_ERASURE
        )
        total = 0
        while True:
            async with tenant_scope(self._database, tenant_id) as session:
                deleted = await repository.delete_documents(
                    session, tenant_id, owner_user_id=owner_user_id, limit=MAX_IDS_PER_EVENT
                )
                if deleted:
                    await record_deletion(
                        session,
                        tenant_id,
                        deleted,
                        reason,
                        requested_by=requested_by,
                        user_id=owner_user_id or "",
                    )
            if not deleted:
                break
            total += len(deleted)
            if owner_user_id is not None:
                await self._forget_vectors(tenant_id, deleted)
            if self._relay is not None:
                self._relay.wake()
        if owner_user_id is None:
            await self._forget_vectors(tenant_id, [], whole_tenant=True)
        return total
