"""The documents-deleted stream (docs/contracts.md): retrieval publishes one event per deletion; the
semantic cache (inference) drops answers grounded in the deleted documents.

Both services declare the stream with this one definition, so whichever starts first creates it.
"""

from __future__ import annotations

from parapet.kit.bus import StreamSpec

SUBJECT_PREFIX = "parapet.retrieval.v1.documents.deleted."
SUBJECTS = SUBJECT_PREFIX + "*"
CE_TYPE = "dev.parapet.retrieval.v1.DocumentsDeletedEvent"

DOCUMENTS_STREAM = StreamSpec(
    name="RETRIEVAL_DOCUMENTS",
    subjects=(SUBJECTS,),
    retention="limits",
    storage="file",
    max_age_seconds=7 * 24 * 3600.0,
    duplicate_window_seconds=120.0,
    description="parapet.retrieval.v1.DocumentsDeletedEvent (docs/contracts.md)",
)


def subject(tenant_id: str) -> str:
    return SUBJECT_PREFIX + tenant_id
