"""Limits of retrieval's requests that its callers keep too (the gateway sends a chat's question as a query)."""

from __future__ import annotations

MAX_QUERY_CHARS = 8192  # a longer QueryRequest.query is INVALID_ARGUMENT
MAX_QUERY_DOCUMENT_IDS = 1000  # of QueryRequest.document_ids (Pinecone's filters take at most 10,000 values)
MAX_QUERY_FILTER_ENTRIES = 64  # of QueryRequest.metadata_filter (a document has at most 64 metadata entries)
