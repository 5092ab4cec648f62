"""System-prompt and canary leakage: the output repeats text the caller marked as protected.

Short protected texts (canary tokens, secrets, phrases under ``SHINGLE_WORDS`` words) match as
case-insensitive substrings, all of them in one scan (``literals.CaselessLiterals``). Long ones (a system prompt) match by word shingles: any run of
``SHINGLE_WORDS`` consecutive words of the prompt, compared after lower-casing and dropping punctuation,
so re-wrapped, re-cased or re-punctuated copies are caught too; consecutive matches merge into one span.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from services.moderation.detectors.base import ANY_LENGTH, C, Detection
from services.moderation.detectors.literals import CaselessLiterals

SHINGLE_WORDS = 6
_WORD = re.compile(r"\w+")
_MAX_WORD = 40  # longer "words" are not prose: compared by their first 40 characters


def _norm(word: str) -> str:
    return word.lower()[:_MAX_WORD]


class LeakDetector:
    name = "leak.protected_text"
    categories = (C.CATEGORY_SYSTEM_PROMPT_LEAK,)
    priority = 100

    def __init__(self, protected_texts: Sequence[str]) -> None:
        exact: list[str] = []
        self._shingles: set[tuple[str, ...]] = set()
        longest = 0
        tokens = SHINGLE_WORDS
        for protected in protected_texts:
            words = [_norm(w) for w in _WORD.findall(protected)]
            if len(words) < SHINGLE_WORDS:
                if protected.strip():
                    exact.append(protected.strip())
                    longest = max(longest, len(protected.strip()))
                    tokens = max(tokens, len(protected.split()))
                continue
            for i in range(len(words) - SHINGLE_WORDS + 1):
                self._shingles.add(tuple(words[i : i + SHINGLE_WORDS]))
        self._exact = CaselessLiterals(exact)
        self.max_tokens = tokens
        # Six words, with any separators between them: a copy spaced out wide is still a copy.
        self.max_span = ANY_LENGTH if self._shingles else max(longest, 1)

    def detect(self, text: str) -> list[Detection]:
        found = [
            Detection(C.CATEGORY_SYSTEM_PROMPT_LEAK, start, end, 1.0, self.name)
            for start, end in self._exact.spans(text)
        ]
        if not self._shingles:
            return found
        words = list(_WORD.finditer(text))
        run_start = run_end = -1
        for i in range(len(words) - SHINGLE_WORDS + 1):
            if tuple(_norm(w.group()) for w in words[i : i + SHINGLE_WORDS]) in self._shingles:
                start, end = words[i].start(), words[i + SHINGLE_WORDS - 1].end()
                if run_end >= start:
                    run_end = end
                else:
                    if run_end >= 0:
                        found.append(
                            Detection(C.CATEGORY_SYSTEM_PROMPT_LEAK, run_start, run_end, 1.0, self.name)
                        )
                    run_start, run_end = start, end
        if run_end >= 0:
            found.append(Detection(C.CATEGORY_SYSTEM_PROMPT_LEAK, run_start, run_end, 1.0, self.name))
        return found
