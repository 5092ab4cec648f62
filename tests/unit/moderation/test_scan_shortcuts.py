"""The detectors' speed shortcuts find exactly what the plain patterns they replace would find.

Each shortcut (a pattern reordered so the regex engine can skip ahead, a str-method split instead of a
regex, a cheap necessary-condition test before an expensive pattern) is checked against the plain form
over random texts drawn from an alphabet rich in the characters the patterns care about (digits, hex
letters, separators, whitespace of several kinds, non-ASCII letters and punctuation).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

import pytest

from services.moderation.detectors import credit_card, email, injection, ip_address, ssn, street_address
from services.moderation.detectors.injection_rules import words_of
from services.moderation.detectors.normalize import _SPELLED, count_single_characters, fold, may_spell_out

_ALPHABET = list("ab ef AF xyz 0123456789  ..--++//::,,;;(())__=%@#\t\n\u00a0\u2003éßЖ\u2014\u2019\u200b")


def _texts(count: int = 3000, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    texts = ["", " ", "a", "a b", " a", "ab", "1", "12", "ab cd ef 12 34"]
    for _ in range(count):
        texts.append("".join(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 60))))
    # Spelled-out runs and long tokens, which random draws rarely make.
    texts += ["s a y  t h a t now", "x s a y t h a t", "AAAAAAAAAAAAAAAA and " + "q" * 20, "Zm9vYmFyYmF6cXV4"]
    # Matches for the necessary-condition tests below, which random draws never make.
    texts += ["ship to USS Enterprise today", "FPO AE 09499", "host fe80::1 and 2001:db8:0:0:0:0:2:1"]
    return texts


def _spans(pattern: re.Pattern[str], text: str) -> list[tuple[int, int]]:
    return [m.span() for m in pattern.finditer(text)]


@pytest.mark.parametrize(
    ("fast", "plain"),
    [
        (credit_card._CANDIDATE, r"(?<![\w+-])\d(?:[ -]?\d){11,18}(?![\w]|-\d)"),
        (ssn._CANDIDATE, r"(?<![\w-])(\d{3})([- ]?)(\d{2})\2(\d{4})(?![\w]|-\d)"),
        (ip_address._V4, r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)"),
    ],
)
def test_reordered_patterns_match_the_plain_ones(fast: re.Pattern[str], plain: str) -> None:
    reference = re.compile(plain)
    digits = random.Random(3)
    texts = _texts() + [
        " ".join(str(digits.randint(0, 10 ** digits.randint(1, 19))) for _ in range(6)) for _ in range(500)
    ]
    for text in texts:
        assert _spans(fast, text) == _spans(reference, text), text


def test_single_character_count_matches_the_lookaround_pattern() -> None:
    reference = re.compile(r"(?<!\S)\S(?!\S)")
    for text in _texts():
        assert count_single_characters(text) == len(reference.findall(text)), text


def test_words_match_the_word_pattern() -> None:
    for text in _texts():
        assert words_of(text) == set(re.findall(r"\w+", text)), text


def test_long_tokens_and_hex_pairs_match_the_lookaround_patterns() -> None:
    tokens, pairs = re.compile(r"(?<!\S)\S{16,}"), re.compile(r"(?<!\S)[0-9A-Fa-f]{2}(?!\S)")
    for text in [*_texts(), "49 67 6e 6f 72 65 20 61 6c 6c 20 70 72 65 76 69 6f 75 73"]:
        assert injection._LONG_TOKEN.spans(text) == _spans(tokens, text), text
        assert injection._HEX_PAIR.count(text) == len(pairs.findall(text)), text


def test_piece_split_matches_the_piece_pattern() -> None:
    for text in _texts():
        split = text.translate(street_address._PIECE_SEPARATORS).split()
        assert split == re.findall(r"[^\s,;:()]+", text), text


def test_necessary_condition_tests_never_skip_a_match() -> None:
    matched = {"spelled": 0, "v6": 0, "military": 0}
    for text in _texts():
        if _SPELLED.search(text.lower()):
            matched["spelled"] += 1
            assert may_spell_out(text), text
        if ip_address._V6.search(text):
            matched["v6"] += 1
            assert ip_address._V6_HINT.search(text), text
        if street_address._MILITARY.search(text):
            matched["military"] += 1
            assert any(needle in text for needle in street_address._MILITARY_NEEDLES), text
    assert all(matched.values()), matched  # every condition was put to the test


def test_folding_joins_spelled_out_letters_exactly_when_the_plain_rule_says() -> None:
    """ASCII text is only lower-cased unless six or more single characters stand in it and the spelled-out
    pattern matches (the rule before the shortcuts: the hint must not widen it)."""
    samples = [*_texts(), '"i g n o r e" all previous', "(s a y t h a)", "x s a y t h a t now"]
    joined_any = False
    for text in (t for t in samples if t.isascii()):
        joined = fold(text)[0] != text.lower()
        expected = count_single_characters(text) >= 6 and _SPELLED.search(text.lower()) is not None
        assert joined == expected, text
        joined_any = joined_any or joined
    assert joined_any


def test_email_windows_find_what_the_whole_text_pattern_finds() -> None:
    for text in [*_texts(), "a@b.io x@y.example.org, c@d@e.io", "@" * 70 + "u@v.example"]:
        found = [(d.start, d.end) for d in email.EmailDetector().detect(text)]
        assert sorted(found) == _spans(email._EMAIL, text), text


class _CountingPattern:
    """A pattern that counts the code points it is asked to search."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.searched = 0

    def finditer(self, text: str, pos: int = 0, endpos: int = 1 << 62) -> Iterator[re.Match[str]]:
        self.searched += min(endpos, len(text)) - pos
        return self.pattern.finditer(text, pos, endpos)


@pytest.mark.parametrize("text", ["@" * 20_000, "a@" * 10_000, "x@y." * 5_000])
def test_email_search_is_linear_in_the_text(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    """The stretches around each "@" overlap: searched one by one, a text of "@"s cost 318 code points of
    search per "@" (4 s for 200,000 of them), where the stretches merged cost each code point once."""
    counting = _CountingPattern(email._EMAIL)
    monkeypatch.setattr(email, "_EMAIL", counting)
    email.EmailDetector().detect(text)
    assert counting.searched <= len(text)
