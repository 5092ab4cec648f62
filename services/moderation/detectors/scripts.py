"""Which letters can continue a value: those of the scripts values are written in, and no others.

Chinese, Japanese and Thai put no space between words, and Korean glues its particles to the word before, so
a value typed in such text touches a letter of that script: "メールはjohn@example.com", "电话090-1234-5678谢谢",
"john@example.com으로". Python's Unicode word class (``\\w``, ``\\b``) counts those letters as word characters,
and an edge check written with it took them for part of the value, which was then not found at all.

A value's edge is judged instead by what could continue the value. Its letters are those of the scripts that
e-mail addresses, street names and keys are written in here: Latin, Greek, Cyrillic and Armenian (U+0000 to
U+058F), their extensions (U+1E00 to U+1FFF) and full-width Latin letters: the same split ``visible`` makes
between scripts whose letters never need a joiner or a zero-width break and those that do. Digits of every
script count (``forms.ascii_forms`` reads them as digits). A letter of any other script is no part of a value:
it ends one as a space would. Detectors whose values are digits and ASCII read ``ascii_forms`` text with
``re.ASCII`` classes instead, which says the same for them.

Classes are built once, at import, from the ~2,300 code points of those ranges.
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


def class_body(accept: Callable[[str], bool]) -> str:
    """The code points of ``VALUE_SCRIPTS`` that ``accept`` takes, as ranges for inside ``[...]``."""
    body: list[str] = []
    for low, high in VALUE_SCRIPTS:
        run: int | None = None
        for code in range(low, high + 2):
            if code <= high and accept(chr(code)):
                run = code if run is None else run
            elif run is not None:
                body.append(f"\\u{run:04x}" if run == code - 1 else f"\\u{run:04x}-\\u{code - 1:04x}")
                run = None
    return "".join(body)


def _is_mark(char: str) -> bool:
    return unicodedata.category(char)[0] == "M"


# Letters (with their combining marks: "mu\u0308ller" is one word) of the value scripts.
LETTER = class_body(lambda c: c.isalpha() or _is_mark(c))
# Letters and digits: what continues a value, or a word of one (``\w`` as far as values go, without "_").
ALNUM = r"\d" + class_body(lambda c: c.isalnum() or _is_mark(c))
WORD = ALNUM + "_"
# A letter of any other script (CJK, kana, Hangul, Thai, Arabic...): it ends a value wherever it stands.
_RANGES = "".join(f"\\u{low:04x}-\\u{high:04x}" for low, high in VALUE_SCRIPTS)
OTHER_LETTER = f"[^\\W\\d_{_RANGES}]"
# Anything else: what a value that may hold any character but those letters (a password) is made of.
NOT_OTHER_LETTER = f"[\\W\\d_{_RANGES}]"

# Greedy to the end, then back to the last such letter: one C-speed pass, whatever stands between.
_UP_TO_LAST_OTHER_LETTER = re.compile(f"(?s:.*){OTHER_LETTER}")


def after_last_other_letter(text: str, start: int, end: int) -> int:
    """Where in ``text[start:end]`` a value still in progress at ``end`` could start at the earliest: just
    after the last letter of another script there (a value never holds one), else ``start``."""
    if text.isascii():  # O(1) in CPython: ASCII text holds none
        return start
    found = _UP_TO_LAST_OTHER_LETTER.match(text, start, end)
    return start if found is None else found.end()
