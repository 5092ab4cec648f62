"""Limits of retrieval's requests that its callers keep too (the gateway sends a chat's question as a query)."""

from __future__ import annotations

MAX_QUERY_CHARS = 8192  # a longer QueryRequest.query is INVALID_ARGUMENT
