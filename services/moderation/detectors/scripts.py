# ruff: noqa: RUF002 - letters of scripts beyond Latin are what this module is about
"""Which letters can continue a value, and which text is written without spaces: two sets, kept apart.

Chinese, Japanese and Thai put no space between words, and Korean glues its particles to the word before, so
a value typed in such text touches a letter of that script: "メールはjohn@example.com", "电话090-1234-5678谢谢",
"john@example.com으로". Python's Unicode word class (``\\w``, ``\\b``) counts those letters as word characters,
and an edge check written with it took them for part of the value, which was then not found at all.

``VALUE_SCRIPTS``: the scripts e-mail addresses, street names and keys are written in here: Latin, Greek,
Cyrillic and Armenian (U+0000 to U+058F), their extensions (U+1E00 to U+1FFF) and full-width Latin letters,
the same split ``visible`` makes between scripts whose letters never need a joiner or a zero-width break and
those that do. Digits of every script count (``forms.ascii_forms`` reads them as digits). A letter of any
other script (``NON_VALUE_LETTER``: Arabic, Hebrew, Devanagari, Georgian, CJK, Thai...) is no part of an
address, a number or a key, and ends one as a space would. Detectors whose values are digits and ASCII read
``ascii_forms`` text with ``re.ASCII`` classes instead, which says the same for them.

``UNSPACED_LETTER``: a letter or mark of the scripts written without spaces between words (Han, kana,
Hangul, Thai, Lao, Khmer, Myanmar), the only ones whose next word touches a value. What may hold a letter of
any script (a password, the words of a name) is cut only there: Arabic, Hebrew, Devanagari or Georgian text
puts a space after a value like Latin text does, so a letter of it inside a value is part of the value
("password: مرحبا2024").

``NON_VALUE_LETTER`` and ``shapes_its_script`` are one split of the scripts asked two questions, and differ in
combining marks and in numbers (circled, Roman, a script's fractions): see there.

Classes are built once, at import, by trying code points one by one: the ~2,000 of the value scripts for
``LETTER`` and ``ALNUM`` (and ``street_address``'s pieces), the ~2,500 of the smaller unspaced blocks for
``UNSPACED_LETTER``, whose ideograph and Hangul syllable blocks (~113,000 code points) are written as whole
ranges, untried. That is about 2 ms (``python -X importtime``); compiling the patterns that hold these
classes costs more: importing ``street_address`` takes 17 to 23 ms instead of 8 before these classes,
``email`` 3.5 to 4.5 instead of 1, ``passwords`` 7 instead of 1 (machines of 2026-12-06).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

# The scripts a value's letters may come from (inclusive ranges). ``visible`` keeps invisible characters
# next to letters outside them, where joiners and zero-width breaks carry meaning.
VALUE_SCRIPTS = ((0x0000, 0x058F), (0x1E00, 0x1FFF), (0xFF21, 0xFF5A))


def in_value_scripts(code: int) -> bool:
    return any(low <= code <= high for low, high in VALUE_SCRIPTS)


def class_body(accept: Callable[[str], bool], ranges: tuple[tuple[int, int], ...] = VALUE_SCRIPTS) -> str:
    """The code points of ``ranges`` (by default the value scripts) that ``accept`` takes, for inside ``[...]``."""
    body: list[str] = []
    for low, high in ranges:
        run: int | None = None
        for code in range(low, high + 2):
            if code <= high and accept(chr(code)):
                run = code if run is None else run
            elif run is not None:
                body.append(_escape(run) if run == code - 1 else f"{_escape(run)}-{_escape(code - 1)}")
                run = None
    return "".join(body)


def _escape(code: int) -> str:
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _is_mark(char: str) -> bool:
    return unicodedata.category(char)[0] == "M"


# Letters (with their combining marks: "mu\u0308ller" is one word) of the value scripts.
LETTER = class_body(lambda c: c.isalpha() or _is_mark(c))
# Letters and digits: what continues a value, or a word of one (``\w`` as far as values go, without "_").
ALNUM = r"\d" + class_body(lambda c: c.isalnum() or _is_mark(c))
WORD = ALNUM + "_"
# A letter of any script but the value scripts (Arabic, Hebrew, Devanagari, CJK, Hangul, Thai...): no address,
# number or key holds one, so it ends them wherever it stands. What ``\w`` takes but digits and "_": letters,
# and numbers that are no decimal digit ("①", "Ⅻ"), which no value holds either. Not combining marks: the blocks of
# marks outside the value scripts include those written over Latin, Greek or Cyrillic letters (U+1AB0 to U+1AFF,
# U+1DC0 to U+1DFF, U+20D0 to U+20FF, U+FE20 to U+FE2F), so a mark is no sign that a value has ended.
_RANGES = "".join(f"\\u{low:04x}-\\u{high:04x}" for low, high in VALUE_SCRIPTS)
NON_VALUE_LETTER = f"[^\\W\\d_{_RANGES}]"


def shapes_its_script(char: str) -> bool:
    """A letter or mark outside the value scripts: a character of a script where joiners and zero-width spaces
    carry meaning (``visible`` keeps them next to one). Unlike ``NON_VALUE_LETTER``, it takes combining marks (a joiner
    often stands after a virama, a mark, with a space or punctuation after it (Malayalam's chillu letters, "ന്\u200d"
    before Unicode 5.1 gave them code points of their own), and dropped there it changes the word) and no
    numbers. Latin, Greek, Cyrillic and Armenian words, digits and numbers of any script and punctuation never
    need them."""
    if in_value_scripts(ord(char)):
        return False
    return unicodedata.category(char)[0] in "LM"


# The blocks of the scripts written without spaces between words (inclusive ranges): Thai and Lao, Myanmar
# and its extensions, Hangul jamo and syllables, Khmer, CJK ideographs and their marks and iteration marks,
# kana, bopomofo, half-width katakana and Hangul, the kana supplements. Only their letters and marks count:
# their digits are digits and their punctuation ("。", "・") punctuation.
_UNSPACED_SCRIPTS = (
    (0x0E00, 0x0EFF), (0x1000, 0x109F), (0x1100, 0x11FF), (0x1780, 0x17FF), (0x3005, 0x303F),
    (0x3040, 0x30FF), (0x3100, 0x318F), (0x31A0, 0x31FF), (0xA960, 0xA97F), (0xA9E0, 0xA9FF),
    (0xAA60, 0xAA7F), (0xD7B0, 0xD7FF), (0xF900, 0xFAFF), (0xFF66, 0xFFDC), (0x1B000, 0x1B16F),
)  # fmt: skip
# Blocks that are letters throughout (ideographs, Hangul syllables): taken whole, not tried one by one.
_UNSPACED_WHOLE = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x20000, 0x323AF))
_UNSPACED_BODY = class_body(lambda c: c.isalpha() or _is_mark(c), _UNSPACED_SCRIPTS) + "".join(
    f"{_escape(low)}-{_escape(high)}" for low, high in _UNSPACED_WHOLE
)
UNSPACED_LETTER = f"[{_UNSPACED_BODY}]"
NOT_UNSPACED_LETTER = f"[^{_UNSPACED_BODY}]"  # anything else: what stands between runs of such text

# Greedy to the end, then back to the last such letter: one C-speed pass, whatever stands between.
_UP_TO_LAST_NON_VALUE_LETTER = re.compile(f"(?s:.*){NON_VALUE_LETTER}")


def after_last_non_value_letter(text: str, start: int, end: int) -> int:
    """Where in ``text[start:end]`` an address, number or key still in progress at ``end`` could start at the
    earliest: just after the last letter outside the value scripts there (it holds none), else ``start``."""
    if text.isascii():  # O(1) in CPython: ASCII text holds none
        return start
    found = _UP_TO_LAST_NON_VALUE_LETTER.match(text, start, end)
    return start if found is None else found.end()
