"""The built-in deterministic provider: answers from the supplied context, streaming word by word.

It lets the whole suite run with no keys and no network, and its answers are reproducible, so tests can assert
on them. It reports no usage, like many self-hosted servers: the engine counts it offline (estimated).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from parapet import tokens
from services.inference.providers.base import Delta, Finish, ProviderEvent, ProviderRequest

_WORD = re.compile(r"\w+", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if len(w) > 2}


def answer(request: ProviderRequest) -> str:
    """The answer: the context sentences sharing most words with the question, with their source titles."""
    question = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
    if not request.context:
        return f"I have no documents to answer from. You asked: {question.strip()}"
    wanted = _words(question)
    scored = []
    for order, (title, text) in enumerate(request.context):
        for sentence in _SENTENCE_END.split(text.strip()):
            if sentence:
                scored.append((-len(wanted & _words(sentence)), order, sentence.strip(), title))
    scored.sort()
    best = scored[:2]
    return " ".join(f"{sentence} [{title or 'source'}]" for _, _, sentence, title in best)


class LocalProvider:
    label = "local"

    def __init__(self, name: str) -> None:
        self.name = name

    async def close(self) -> None:
        return None

    async def stream(self, request: ProviderRequest) -> AsyncIterator[ProviderEvent]:
        text = answer(request)
        for stop in request.stop:
            if stop and stop in text:
                text = text[: text.index(stop)]
        words = text.split(" ")
        finish: str = "stop"
        if request.max_tokens is not None and tokens.count(" ".join(words)) > request.max_tokens:
            finish = "length"
            words = words[: _words_within(words, request.max_tokens)]
        for index, word in enumerate(words):
            yield Delta(word if index == 0 else " " + word)
        yield Finish("length" if finish == "length" else "stop", None)


def _words_within(words: list[str], limit: int) -> int:
    """The most leading words whose text counts at most ``limit`` tokens. A binary search: a longer prefix never
    counts fewer tokens, and counting each prefix in turn was quadratic in the answer's length."""
    low, high = 0, len(words)  # words[:low] fits; words[:high + 1] does not (or high is every word)
    while low < high:
        middle = (low + high + 1) // 2
        if tokens.count(" ".join(words[:middle])) <= limit:
            low = middle
        else:
            high = middle - 1
    return low
