# ruff: noqa: RUF002, RUF003 - full-width and typographic characters are what this module is about
"""Values written in other forms of the same characters: full-width (as CJK input methods type them), other
scripts' decimal digits, typographic dashes and no-break spaces.

``ascii_forms`` replaces each by its ASCII form, one code point for one, so the pattern detectors match and
check ("４" is worth 4 to Luhn, not its code point) the text as if typed in ASCII, and every span they find
in it is the span of the same value in the text as written. What changes lengths is done elsewhere, with
offsets mapped back: dropping invisible characters typed inside values by ``visible`` (before any detector
reads the text), NFKC and the rest of the attack folding by ``normalize.fold``.
"""

from __future__ import annotations

import functools
import sys

# Hyphen, non-breaking hyphen, figure dash, en dash, em dash, horizontal bar, minus sign, small hyphen-minus.
_DASHES = (0x2010, 0x2011, 0x2012, 0x2013, 0x2014, 0x2015, 0x2212, 0xFE63)
# No-break space, the typographic spaces (en quad to hair space: thin ones group digits in French text),
# narrow no-break space, ideographic space.
_SPACES = (0x00A0, *range(0x2000, 0x200B), 0x202F, 0x3000)
_FULL_WIDTH = range(0xFF01, 0xFF5F)  # "！" to "～": ASCII "!" to "~" at a fixed distance
_FULL_WIDTH_OFFSET = 0xFF01 - 0x21


@functools.cache
def translation() -> dict[int, str]:
    """The code point -> ASCII table (built once: a walk over every code point, about 50 ms)."""
    table = {code: chr(code - _FULL_WIDTH_OFFSET) for code in _FULL_WIDTH}
    table.update(dict.fromkeys(_DASHES, "-"))
    table.update(dict.fromkeys(_SPACES, " "))
    for code in range(0x80, sys.maxunicode + 1):
        char = chr(code)
        if char.isdecimal():
            table[code] = str(int(char))  # every script's 0-9, the full-width ones included
    return table


@functools.cache
def _characters() -> frozenset[str]:
    return frozenset(map(chr, translation()))


@functools.lru_cache(maxsize=4)
def ascii_forms(text: str) -> str:
    """``text`` with full-width forms, decimal digits, dashes and no-break spaces in ASCII; same length.

    Cached for the last few texts: every pattern detector asks for the same text in turn. Most non-ASCII
    text (accented prose) holds nothing to replace, which a set lookup per code point tells for a third of
    what translating costs."""
    if text.isascii():
        return text
    if _characters().isdisjoint(text):
        return text
    return text.translate(translation())
