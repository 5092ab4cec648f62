"""The permissions retrieval's RPCs need; whether a caller holds one is the kit's rule (parapet.kit.permissions)."""

from __future__ import annotations

INGEST = "ingest"
DOCUMENTS_READ = "documents.read"
DOCUMENTS_DELETE = "documents.delete"
