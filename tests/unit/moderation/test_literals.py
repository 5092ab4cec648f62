"""One scan for all short protected texts finds exactly what one case-insensitive regex per text found."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence

from services.moderation.detectors.base import Detection
from services.moderation.detectors.leak import LeakDetector
from services.moderation.detectors.literals import CaselessLiterals, fold, fold_table

# Letters re equates with others beyond upper and lower case (dotless i and dotted capital I, long s, the
# Kelvin sign, micro sign and mu, sharp s, final sigma, theta symbols), regex metacharacters, digits,
# spaces and one uncased letter.
ALPHABET = (
    "aAbB iI\u0131\u0130 sS\u017f kK\u212a \u00b5\u03bc\u039c \u00df\u1e9e \u03c3\u03c2\u03a3 "
    "\u03b8\u03d1\u0398\u03f4 .*+?()[]\\| 01 -_ \u5b57"
)


def reference_spans(literals: Sequence[str], text: str) -> Counter[tuple[int, int]]:
    """What the leak detector did before: one compiled case-insensitive regex per literal."""
    patterns = [re.compile(re.escape(literal), re.IGNORECASE) for literal in literals]
    return Counter((m.start(), m.end()) for pattern in patterns for m in pattern.finditer(text))


def random_text(rng: random.Random, low: int, high: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(low, high)))


def test_same_matches_as_one_regex_per_literal_on_random_inputs() -> None:
    rng = random.Random(20261206)
    for _ in range(3000):
        literals = [random_text(rng, 1, 4) for _ in range(rng.randint(1, 8))]
        # The same text twice counts twice.
        literals += rng.sample(literals, min(len(literals), rng.randint(0, 2)))
        # Texts built from the literals (re-cased) and noise, so matches, overlaps and nestings are common.
        parts = [rng.choice([rng.choice(literals).swapcase(), random_text(rng, 0, 3)]) for _ in range(8)]
        text = "".join(parts)
        assert Counter(CaselessLiterals(literals).spans(text)) == reference_spans(literals, text), (
            literals,
            text,
        )


def test_overlapping_and_nested_literals_match_as_finditer_does() -> None:
    literals = ["aa", "a", "AAA", "b"]
    text = "aaaab"
    assert Counter(CaselessLiterals(literals).spans(text)) == reference_spans(literals, text)
    assert sorted(CaselessLiterals(["aa"]).spans("aaaaa")) == [(0, 2), (2, 4)]  # leftmost, not overlapping


def test_fold_equates_exactly_the_characters_re_ignorecase_equates() -> None:
    """For every cased code point (and the ones they fold to), the characters a case-insensitive regex of
    it matches are exactly those with the same fold; every other code point folds to itself, and no
    cased one folds to it, so it matches only itself, as re matches an uncased character."""
    table = fold_table()
    cased = sorted({*table, *table.values()} | {ord(c) for c in ALPHABET})
    universe = "".join(map(chr, cased))
    folded = {code: fold(chr(code)) for code in cased}
    for code in cased:
        matched = set(re.findall(re.escape(chr(code)), universe, re.IGNORECASE))
        assert matched == {chr(c) for c in cased if folded[c] == folded[code]}, hex(code)
    representatives = set(table.values())
    assert all(code in folded for code in representatives)  # so the loop above checked them all


def leak_spans(detections: Sequence[Detection]) -> Counter[tuple[int, int]]:
    return Counter((d.start, d.end) for d in detections)


def test_leak_detector_reports_what_the_per_text_regexes_reported() -> None:
    rng = random.Random(7)
    for _ in range(300):
        literals = [random_text(rng, 1, 6) for _ in range(rng.randint(1, 6))]
        text = " ".join(rng.choice([rng.choice(literals).upper(), random_text(rng, 0, 5)]) for _ in range(6))
        stripped = [literal.strip() for literal in literals if literal.strip()]
        assert leak_spans(LeakDetector(literals).detect(text)) == reference_spans(stripped, text)


def test_empty_literal_is_refused_and_none_finds_nothing() -> None:
    assert CaselessLiterals([]).spans("anything") == []
    try:
        CaselessLiterals([""])
    except ValueError:
        return
    raise AssertionError("an empty literal would match everywhere")
