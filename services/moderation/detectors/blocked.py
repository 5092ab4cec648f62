"""Tenant-blocked terms and topics (``ModerationPolicy.blocked_terms`` / ``blocked_topics``).

Terms match case-insensitively on word boundaries, after folding homoglyphs and invisible characters
(so "c\u200bompetitor" still matches "competitor"). A topic is given in plain words ("competitor
pricing"); it matches where all of its content words occur, in any inflection (a crude stem: suffix stripped,
first five letters: "pricing" ~ "prices"), within ``TOPIC_WINDOW_WORDS`` consecutive words of one sentence.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from services.moderation.detectors.base import ANY_LENGTH, C, Detection
from services.moderation.detectors.normalize import fold

TOPIC_WINDOW_WORDS = 12
_STEM = 5
_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"[.!?\n]")
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "for",
        "with",
        "about",
        "by",
        "from",
        "at",
        "as",
        "is",
        "are",
        "be",
        "our",
        "their",
        "your",
        "my",
        "any",
        "all",
        "how",
        "what",
        "der",
        "die",
        "das",
        "und",
        "oder",
        "von",
        "zu",
        "im",
        "in",
        "am",
        "mit",
        "über",
        "für",
        "ein",
        "eine",
        "einer",
    ]
)


_SUFFIXES = ("ations", "ation", "ings", "ing", "ers", "ies", "ied", "es", "ed", "er", "s", "ung", "en", "e")


def _stem(word: str) -> str:
    """A crude stem: common English/German inflection stripped, then the first five letters."""
    word = word.lower()
    for suffix in _SUFFIXES:
        if len(word) - len(suffix) >= 3 and word.endswith(suffix):
            word = word[: -len(suffix)]
            break
    return word[:_STEM]


class BlockedTermDetector:
    name = "policy.blocked_term"
    categories = (C.CATEGORY_BLOCKED_TERM,)
    priority = 94

    def __init__(self, terms: Sequence[str]) -> None:
        # Stripped after folding: a term of invisible characters folds to nothing, and an empty alternative
        # matched at every word boundary (every text blocked); one led by them kept a leading space.
        folded = {fold(t)[0].strip() for t in terms}
        cleaned = sorted(folded - {""}, key=len, reverse=True)
        self._pattern = (
            re.compile(r"(?<!\w)(?:" + "|".join(re.escape(t) for t in cleaned) + r")(?!\w)")
            if cleaned
            else None
        )
        self.max_span = ANY_LENGTH  # folding drops invisible characters, however many pad a term
        self.max_tokens = max((len(t.split()) for t in cleaned), default=1)

    def detect(self, text: str) -> list[Detection]:
        if self._pattern is None:
            return []
        folded, index = fold(text)
        return [
            Detection(C.CATEGORY_BLOCKED_TERM, index[m.start()], index[m.end() - 1] + 1, 1.0, self.name)
            for m in self._pattern.finditer(folded)
        ]


class BlockedTopicDetector:
    name = "policy.blocked_topic"
    categories = (C.CATEGORY_BLOCKED_TOPIC,)
    priority = 93
    max_span = ANY_LENGTH  # twelve words, however far apart on the line
    max_tokens = TOPIC_WINDOW_WORDS

    def __init__(self, topics: Sequence[str]) -> None:
        self._topics: list[tuple[str, ...]] = []
        for topic in topics:
            words = [w for w in _WORD.findall(topic.lower()) if w not in _STOPWORDS]
            if words:
                self._topics.append(tuple(dict.fromkeys(_stem(w) for w in words)))

    def detect(self, text: str) -> list[Detection]:
        if not self._topics:
            return []
        words = list(_WORD.finditer(text))
        stems = [_stem(w.group()) for w in words]
        found: list[Detection] = []
        for topic in self._topics:
            last: dict[str, int] = {}
            wanted = set(topic)
            for i, stem in enumerate(stems):
                if i and _SENTENCE_END.search(text, words[i - 1].end(), words[i].start()):
                    last.clear()  # a topic is about one sentence, not two neighbouring ones
                if stem not in wanted:
                    continue
                last[stem] = i
                if len(last) == len(wanted):
                    first = min(last.values())
                    if i - first < TOPIC_WINDOW_WORDS:
                        found.append(
                            Detection(
                                C.CATEGORY_BLOCKED_TOPIC, words[first].start(), words[i].end(), 0.9, self.name
                            )
                        )
                        last.clear()
        return found
