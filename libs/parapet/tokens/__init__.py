"""Offline token counting with OpenAI's cl100k/o200k encodings (vocabularies compiled into `toktok-rs`).

Used where a provider reports no usage (the count is then marked estimated) and by the upstream emulator,
which reports exact usage. Nothing is downloaded: `tiktoken` fetches its vocabularies at first use and fails
offline, `toktok` ships them inside its extension module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import toktok  # type: ignore[import-untyped]  # ships no type information

Encoding = Literal["cl100k_base", "o200k_base"]
ENCODINGS: tuple[Encoding, ...] = ("cl100k_base", "o200k_base")
DEFAULT_ENCODING: Encoding = "cl100k_base"

# OpenAI's chat format adds a few tokens per message (role markers) and 3 to prime the reply; the same
# constants tiktoken's cookbook uses, so an estimate of a chat prompt lands on what OpenAI would report.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3

# Model name prefixes that use o200k; everything else (older OpenAI models, other vendors, local models)
# is estimated with cl100k, which is close enough for models whose own tokenizer we do not ship.
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")


def encoding_for_model(model: str) -> Encoding:
    """The encoding to count ``model``'s tokens with."""
    return "o200k_base" if model.lower().startswith(_O200K_PREFIXES) else DEFAULT_ENCODING


def known_encoding(name: str) -> Encoding:
    """``name`` as an encoding this module counts with; the default for a name it does not know (another
    service's newer encoding, or none given): an estimate is better than no count."""
    for encoding in ENCODINGS:
        if encoding == name:
            return encoding
    return DEFAULT_ENCODING


def count(text: str, encoding: Encoding = DEFAULT_ENCODING) -> int:
    """Tokens in ``text``."""
    if not text:
        return 0
    return int(toktok.batch_count([text], encoding, threads=1)[0])


def count_many(texts: Iterable[str], encoding: Encoding = DEFAULT_ENCODING) -> list[int]:
    """Tokens in each of ``texts``, in order."""
    items = list(texts)
    if not items:
        return []
    return [int(n) for n in toktok.batch_count(items, encoding, threads=1)]


def count_chat(messages: Sequence[tuple[str, str]], encoding: Encoding = DEFAULT_ENCODING) -> int:
    """Prompt tokens of a chat of (role, content) pairs, as OpenAI counts them."""
    contents = count_many([content for _, content in messages] + [role for role, _ in messages], encoding)
    return sum(contents) + TOKENS_PER_MESSAGE * len(messages) + TOKENS_PER_REPLY


__all__ = [
    "DEFAULT_ENCODING",
    "ENCODINGS",
    "Encoding",
    "count",
    "count_chat",
    "count_many",
    "encoding_for_model",
    "known_encoding",
]
