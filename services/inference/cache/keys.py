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
    model: str,
    template: str,
    template_version: str,
    system: str,
    generation: dict[str, object],
    earlier_turns: list[tuple[str, str]],
    context: Iterable[tuple[str, str, str, str]],
) -> str:
    """Requests that would get the same answer: same route and the model it chose, template and the system text
    it rendered, parameters, earlier turns and context.

    ``model``: a route picks its model per request (complexity rules, canary variants); keyed on the route
    alone, one model's answer was served to requests the route sent to another. ``system``: the template's
    variables are rendered into it (a product's name); keyed on the template alone, an answer written for one
    product was served to another. The rendered text, not the variables, so a variable it does not use does
    not split the cache."""
    return _digest(
        {
            "route": route,
            "model": model,
            "template": template,
            "version": template_version,
            "system": system,
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
