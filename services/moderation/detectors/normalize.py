# ruff: noqa: RUF001, RUF002, RUF003 - look-alike characters are what this module is about
"""Folding text for detectors that attackers try to evade: invisible characters, homoglyphs, compatibility forms.

``fold`` returns the folded text and, for each folded code point, the index of the original code point it
came from, so findings on the folded text map back to spans of the text the caller sent.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

# Zero-width, bidi controls, soft hyphen, word joiners, BOM, variation selectors, fillers and the invisible
# "tag" block: they render as nothing, so "ig\u200bnore" reads as "ignore" to a model but defeats a naive
# pattern. ``visible`` drops the same characters for the pattern detectors (docs/moderation.md says which
# are kept there and why).
INVISIBLE_RANGES = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE007F),
    (0xE0100, 0xE01EF),
)

# Letters of other scripts that look like Latin ones (Cyrillic, Greek) and common leetspeak digits inside
# words are folded to the Latin letter they imitate.
_HOMOGLYPHS = {
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "ɡ": "g", "һ": "h",
    "ӏ": "l", "ԛ": "q", "ԝ": "w", "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v",
    "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ѵ": "v", "ɑ": "a", "ı": "i",
}  # fmt: skip


_WORD = re.compile(r"\S+")
# Six or more letters each followed by one space (or two at word breaks): "s a y t h a t".
_SPELLED = re.compile(r"(?<!\w)(?:\w {1,2}){5,}\w(?!\w)")
# Three single characters in a row between spaces: every spelled-out run holds this, and a search for it
# (led by a literal space) costs a tenth of the full pattern, which most texts then never need.
_SPELLED_HINT = re.compile(r" \w {1,2}\w {1,2}\w ")


def may_spell_out(text: str) -> bool:
    """False when ``text`` cannot hold letters spelled out one by one; True when it might."""
    return _SPELLED_HINT.search(text) is not None


def is_invisible(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in INVISIBLE_RANGES)


def _latin_words(text: str) -> list[bool]:
    """For each code point, whether its word holds a Latin letter (only there are look-alikes folded)."""
    flags = [False] * len(text)
    for match in _WORD.finditer(text):
        if any("a" <= c <= "z" or "A" <= c <= "Z" for c in match.group()):
            flags[match.start() : match.end()] = [True] * (match.end() - match.start())
    return flags


def fold(text: str) -> tuple[str, Sequence[int]]:
    """Lower-cased text without invisible characters, homoglyphs and compatibility forms folded.

    Look-alike letters are mapped only inside words that also hold Latin letters: "ignоre" with a
    Cyrillic о is an evasion, a Russian sentence is not. Letters spelled out one by one ("s a y  t h a t")
    are joined. Returns the folded text and a list mapping each folded index to its original index (one
    extra entry at the end for the text's length, so an end offset maps too).
    """
    # Letters are joined only where six or more single characters stand in the text the caller sent; the
    # hint and the count are both cheap necessary tests before the pattern.
    spelled_out = may_spell_out(text) and count_single_characters(text) >= 6
    if text.isascii() and not (spelled_out and _SPELLED.search(text.lower())):
        # The common case: nothing to fold but case, and the identity map (a range: no list to build).
        return text.lower(), range(len(text) + 1)
    out: list[str] = []
    index: list[int] = []
    latin = _latin_words(text) if not text.isascii() else []
    for position, char in enumerate(text):
        if char.isascii():
            out.append(char.lower())
            index.append(position)
            continue
        if is_invisible(char):
            continue
        lowered = char.lower()
        mapped = _HOMOGLYPHS.get(lowered) if latin[position] else None
        if mapped is None:
            # NFKC turns fullwidth and mathematical letters (ｉｇｎｏｒｅ, 𝐢𝐠𝐧𝐨𝐫𝐞) into plain ones.
            mapped = unicodedata.normalize("NFKC", lowered).lower()
        for piece in mapped:
            out.append(piece)
            index.append(position)
    folded = "".join(out)
    if count_single_characters(text) >= 6 and may_spell_out(folded) and _SPELLED.search(folded):
        folded, index = _join_spelled(folded, index)
    index.append(len(text))
    return folded, index


def _join_spelled(folded: str, index: list[int]) -> tuple[str, list[int]]:
    keep = [True] * len(folded)
    for match in _SPELLED.finditer(folded):
        run = match.group()
        # Single spaces between letters go; a double space (a word break) becomes one space.
        for offset in range(1, len(run) - 1):
            position = match.start() + offset
            if (run[offset] == " " and run[offset - 1] != " " and run[offset + 1] != " ") or (
                run[offset] == " " and run[offset - 1] == " "
            ):
                keep[position] = False
    return (
        "".join(c for c, k in zip(folded, keep, strict=True) if k),
        [i for i, k in zip(index, keep, strict=True) if k],
    )


class TokenStart:
    r"""A pattern matched only where a whitespace-separated token starts.

    It is searched after a whitespace character, plus once at the text's start. A pattern that begins with
    a character class lets the regex engine skip ahead to candidates, where a leading ``(?<!\S)``
    look-behind, or none, makes it try every position inside every word: about twice as fast on prose.
    """

    def __init__(self, body: str) -> None:
        self._after_space = re.compile(rf"\s({body})")
        self._at_start = re.compile(body)

    def spans(self, text: str) -> list[tuple[int, int]]:
        spans = [m.span(1) for m in self._after_space.finditer(text)]
        first = self._at_start.match(text)
        return [first.span(), *spans] if first is not None else spans

    def count(self, text: str) -> int:
        return len(self._after_space.findall(text)) + (self._at_start.match(text) is not None)


_SINGLE_CHARACTER = TokenStart(r"\S(?!\S)")


def count_single_characters(text: str) -> int:
    """Whitespace-separated pieces of one character ("s a y t h a t" has seven)."""
    return _SINGLE_CHARACTER.count(text)


def count_invisible(text: str) -> int:
    if text.isascii():
        return 0
    return sum(1 for char in text if not char.isascii() and is_invisible(char))


def mixed_script_words(text: str) -> int:
    """Words mixing Latin letters with look-alike letters of another script: a homoglyph evasion sign."""
    if text.isascii():
        return 0
    count = 0
    for word in text.split():
        has_latin = any("a" <= c.lower() <= "z" for c in word)
        has_glyph = any(c.lower() in _HOMOGLYPHS for c in word)
        if has_latin and has_glyph:
            count += 1
    return count
