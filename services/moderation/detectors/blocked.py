"""Tenant-blocked terms and topics (``ModerationPolicy.blocked_terms`` / ``blocked_topics``).

Terms match case-insensitively on word boundaries, after folding homoglyphs and invisible characters
(so "c\u200bompetitor" still matches "competitor"), with full case folding and canonical composition on
both sides ("Straße" matches "STRASSE", a decomposed "Cafe\u0301" matches "café") and any run of
whitespace between a term's words. A topic is given in plain words ("competitor
pricing"); it matches where all of its content words occur, in any inflection (a crude stem: suffix stripped,
first five letters: "pricing" ~ "prices"), within ``TOPIC_WINDOW_WORDS`` consecutive words of one sentence.
"""

from __future__ import annotations

import re
import unicodedata
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


def _term_form(text: str) -> tuple[str, Sequence[int], Sequence[int] | None]:
    """``text`` as terms are matched: ``fold``, then full case folding and NFC per base character with its
    combining marks; with, per code point of the result, the start and end of what it came from in ``text``
    (ends None: each came from one code point, ``start + 1``, which needs no list of its own).
    ``fold`` alone lower-cases one code point at a time: "STRASSE" never matched "Straße", and a decomposed
    "e\u0301" (macOS input, text copied from PDFs) never matched "é", nor the other way round (until
    2026-12-06)."""
    folded, index = fold(text)
    if folded.isascii():  # nothing to compose or fold further: the common case
        return folded, index, None
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    position = 0
    while position < len(folded):
        stop = position + 1
        while stop < len(folded) and unicodedata.combining(folded[stop]):
            stop += 1  # a base character and its marks are composed together
        piece = unicodedata.normalize("NFC", folded[position:stop].casefold())
        out.append(piece)
        starts.extend([index[position]] * len(piece))
        ends.extend([index[stop - 1] + 1] * len(piece))
        position = stop
    return "".join(out), starts, ends


class BlockedTermDetector:
    name = "policy.blocked_term"
    categories = (C.CATEGORY_BLOCKED_TERM,)
    priority = 94

    def __init__(self, terms: Sequence[str]) -> None:
        # Stripped after folding: a term of invisible characters folds to nothing, and an empty alternative
        # matched at every word boundary (every text blocked); one led by them kept a leading space.
        folded = {" ".join(_term_form(t)[0].split()) for t in terms}
        cleaned = sorted(folded - {""}, key=len, reverse=True)
        # Any whitespace between the words: a line break or two spaces in the text ended no term before.
        alternatives = (r"\s+".join(re.escape(word) for word in t.split()) for t in cleaned)
        self._pattern = re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)") if cleaned else None
        self.max_span = ANY_LENGTH  # folding drops invisible characters, however many pad a term
        self.max_tokens = max((len(t.split()) for t in cleaned), default=1)

    def detect(self, text: str) -> list[Detection]:
        if self._pattern is None:
            return []
        folded, starts, ends = _term_form(text)
        found = []
        for m in self._pattern.finditer(folded):
            last = m.end() - 1
            end = starts[last] + 1 if ends is None else ends[last]
            found.append(Detection(C.CATEGORY_BLOCKED_TERM, starts[m.start()], end, 1.0, self.name))
        return found


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
