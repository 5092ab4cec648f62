"""What a cache entry is keyed by, as digests: the access scope and the partition of equivalent requests."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class CacheKey:
    tenant_id: str
    scope_key: str
    partition_key: str


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def scope_key(groups: Iterable[str]) -> str:
    """The caller's document-access scope: two callers share answers only with exactly the same groups."""
    return _digest(sorted(set(groups)))


def partition_key(
    route: str,
    template: str,
    template_version: str,
    generation: dict[str, object],
    earlier_turns: list[tuple[str, str]],
    context: Iterable[tuple[str, str, str, str]],
) -> str:
    """Requests that would get the same answer: same route, template, parameters, earlier turns and context."""
    return _digest(
        {
            "route": route,
            "template": template,
            "version": template_version,
            "generation": generation,
            "turns": earlier_turns,
            "context": context_digest(context),
        }
    )


def context_digest(chunks: Iterable[tuple[str, str, str, str]]) -> str:
    """The grounding of an answer: each chunk's (document id, title, source URI, text), everything the prompt
    shows of it; no chunks (retrieval disabled or nothing found) is a partition of its own.

    Order-insensitive: the shipped templates have the model cite documents by title, so the same chunks in
    another order ground the same answer, and a paraphrase often retrieves the same chunks ranked otherwise.
    Left out of the partition, an answer grounded in one set of documents was served to a request grounded in
    another, or in none (a caller without access to documents got answers built from them)."""
    return _digest(sorted(chunks))


def normalise_question(text: str) -> str:
    """Case, Unicode form and whitespace do not make a different question."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def question_hash(text: str) -> str:
    return hashlib.sha256(normalise_question(text).encode()).hexdigest()
