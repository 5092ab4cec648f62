"""Text as it reads: invisible characters typed inside values dropped, and the way back to the text as written.

A zero-width space, a joiner, a word joiner, a BOM or a soft hyphen inside "4111 11\u200b11 1111 1111" renders
as nothing, so reader and model see a card number, while a pattern detector saw two runs of digits and let it
through. ``visible`` drops them (the ranges of ``normalize.INVISIBLE_RANGES``) and keeps where each dropped
run stood, so a span found in the visible text maps back to the span of the same value as written: from its
first code point to its last, the invisible characters inside it included, those around it not. Masking
replaces that span, and the value restored later is the one the caller typed.

Not every such character is noise. Zero-width (non-)joiners shape Arabic, Persian and Indic words, and a
zero-width space is the word break of Thai, Khmer or Japanese text. A run is therefore kept where a letter or
mark of such a script (any outside ``scripts.VALUE_SCRIPTS``) stands next to it: no address, number or key a
pattern detector finds holds one (their values are digits, letters of the value scripts and punctuation,
after ``forms.ascii_forms``), so a run inside such a value always has value characters on both sides, and
kept there it still separates what it separated (the break before "john@example.com" in
"メール\u200bjohn@example.com"). A password may hold such letters ("pwd=नमस्ते123"); a run kept inside one is
no whitespace, so the password pattern takes it with the value, as it was typed.

ASCII text holds none of them and costs one ``isascii``; other text one regex scan when it holds none (about
40 µs per 4 KB).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import re
from dataclasses import dataclass

from services.moderation.detectors.base import Detection
from services.moderation.detectors.normalize import INVISIBLE_RANGES
from services.moderation.detectors.scripts import shapes_its_script


def _runs(ranges: tuple[tuple[int, int], ...]) -> re.Pattern[str]:
    return re.compile("[" + "".join(f"{chr(low)}-{chr(high)}" for low, high in ranges) + "]+")


# Two patterns: a class of only Basic Multilingual Plane ranges compiles to a bitmap, one lookup per code point;
# with the astral ranges (tags, variation selectors 17-256) in it, each code point is tried against every
# range, and a 4 KB text cost 100 µs instead of 40. Only a text holding astral code points needs the second.
_BMP_RUN = _runs(tuple(r for r in INVISIBLE_RANGES if r[1] <= 0xFFFF))
_ANY_RUN = _runs(INVISIBLE_RANGES)


@dataclass(frozen=True, slots=True)
class VisibleText:
    """``text`` without the dropped runs; ``_at[i]`` is the index in ``text`` before which run ``i`` stood and
    ``_dropped[i]`` how many code points runs ``0..i`` held together."""

    text: str
    _at: tuple[int, ...]
    _dropped: tuple[int, ...]

    def position(self, index: int) -> int:
        """Where the code point at ``index`` of ``text`` stands in the text as written (the end maps to the
        end): after every run dropped before it."""
        run = bisect.bisect_right(self._at, index)
        return index + (self._dropped[run - 1] if run else 0)

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The span as written of ``text[start:end]``: from its first code point to just after its last, so
        runs inside it are covered and runs at its edges are not."""
        if end <= start:
            return (at := self.position(start)), at
        return self.position(start), self.position(end - 1) + 1

    def detection(self, found: Detection) -> Detection:
        start, end = self.span(found.start, found.end)
        return dataclasses.replace(found, start=start, end=end)

    def end_of_visible(self) -> int:
        """The end, in the text as written, of its last code point that is not dropped."""
        return self.position(len(self.text) - 1) + 1 if self.text else 0


def visible(text: str) -> VisibleText | None:
    """``text`` without invisible characters, or None when it holds none to drop (most texts: no work)."""
    if text.isascii():
        return None
    return _visible(text)


@functools.lru_cache(maxsize=4)
def _visible(text: str) -> VisibleText | None:
    # Cached for the last few texts, as ``forms.ascii_forms``: every detector of a screen asks for the same one,
    # and a stream's scan and hold-back ask for theirs in turn.
    pieces: list[str] = []
    at: list[int] = []
    dropped: list[int] = []
    cursor = total = 0
    astral = len(text.encode("utf-16-le", "surrogatepass")) != 2 * len(text)  # C speed: 3 µs per 4 KB
    for match in (_ANY_RUN if astral else _BMP_RUN).finditer(text):
        start, end = match.span()
        if (start > 0 and shapes_its_script(text[start - 1])) or (
            end < len(text) and shapes_its_script(text[end])
        ):
            continue
        pieces.append(text[cursor:start])
        at.append(start - total)
        total += end - start
        dropped.append(total)
        cursor = end
    if not at:
        return None
    pieces.append(text[cursor:])
    return VisibleText("".join(pieces), tuple(at), tuple(dropped))
