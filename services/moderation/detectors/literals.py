"""Many literals found case-insensitively in one scan, with exactly the matches of one regex per literal.

The leak detector used to compile ``re.compile(re.escape(literal), re.IGNORECASE)`` per protected text and
run each on every stream chunk: 40,000 short ones cost 1.4 s of CPU for a ScreenOutput. Here the text is
case-folded once (``fold``) and one case-sensitive alternation of the folded literals finds, at each
position where any literal starts, the longest; the shorter ones starting there are known from it. Per
literal, matches are then kept as ``finditer`` keeps them: leftmost first, never overlapping each other.

Case-sensitive search on folded text equals ``re.IGNORECASE`` only with ``re``'s own notion of "same
character ignoring case" (not ``str.lower`` or ``str.casefold``: ``re`` equates the dotless i with ``i``,
the long s with ``s``, and the capital I with a dot above with ``i`` in one code point). So the fold is built from the tables ``re`` compiles
IGNORECASE literals with (``_sre.unicode_tolower``, ``re._casefix``); ``tests/unit/moderation/
test_literals.py`` checks it against ``re`` for every cased code point, so a Python whose ``re`` folds
differently fails the tests instead of changing findings.
"""

from __future__ import annotations

import functools
import heapq
import importlib
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

_sre = importlib.import_module("_sre")  # no public API exposes re's character folding
_iscased: Callable[[int], bool] = _sre.unicode_iscased
_tolower: Callable[[int], int] = _sre.unicode_tolower
# Lower-case code points re also equates with others (i and dotless i, s and long s, micro sign and mu, …):
# symmetric groups.
_EXTRA_CASES: dict[int, tuple[int, ...]] = importlib.import_module("re._casefix")._EXTRA_CASES


@functools.cache
def fold_table() -> dict[int, int]:
    """Code point -> the representative of its IGNORECASE class, for the ~1,500 that are not their own.

    ``re`` matches a cased pattern character ``p`` by ``tolower(t) in {tolower(p)} | extra(tolower(p))``
    and an uncased one by identity; no cased character lowers into an uncased one, so mapping each cased
    character to the least member of its class makes equal folds exactly re's matches. Built once per
    process on first use (about 0.1 s: every code point is asked).
    """
    table: dict[int, int] = {}
    for code in range(sys.maxunicode + 1):
        if _iscased(code):
            lower = _tolower(code)
            representative = min((lower, *_EXTRA_CASES.get(lower, ())))
            if representative != code:
                table[code] = representative
    return table


def fold(text: str) -> str:
    """``text`` with every character replaced by its IGNORECASE representative; same length, same offsets."""
    return text.translate(fold_table())


def _alternation(literals: Sequence[str]) -> str:
    """One alternative per first character, longest literal first, so a match is the longest literal
    starting there; alternatives that open with a literal character let ``re`` reject them at once and
    skip positions no literal can start at."""
    rests: dict[str, list[str]] = {}
    for literal in sorted(literals, key=len, reverse=True):
        rests.setdefault(literal[0], []).append(re.escape(literal[1:]))
    return "|".join(
        re.escape(first) + (tails[0] if len(tails) == 1 else f"(?:{'|'.join(tails)})")
        for first, tails in rests.items()
    )


class CaselessLiterals:
    """Finds every literal as ``re.finditer(re.escape(literal), text, re.IGNORECASE)`` would."""

    def __init__(self, literals: Sequence[str]) -> None:
        if any(not literal for literal in literals):
            raise ValueError("literals must not be empty")
        # Literals that fold alike match alike: each such group is searched once, reported per literal.
        self._copies: Counter[str] = Counter(fold(literal) for literal in literals)
        self._prefixes = _prefix_literals(self._copies)
        self._pattern = re.compile(_alternation(list(self._copies))) if literals else None

    def spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of every match of every literal, once per literal; in no particular order.

        Where the alternation matches, the literals matching there are the longest and the literals it
        starts with. Of those, a literal is taken only where finditer would look for it again (from the
        end of its last match): the ones still "awake" are a set intersected with them in C, and a taken
        one sleeps in a heap until its match ends. So work grows with the matches kept, not with every
        overlapping occurrence: 256 nested literals (a, aa, …) over 4,000 a's would otherwise be a million.
        """
        if self._pattern is None:
            return []
        folded = fold(text)
        awake = set(self._copies)
        asleep: list[tuple[int, str]] = []  # (where finditer would search on from, literal)
        found: list[tuple[int, int]] = []
        position = 0
        while (match := self._pattern.search(folded, position)) is not None:
            start = match.start()
            while asleep and asleep[0][0] <= start:
                awake.add(heapq.heappop(asleep)[1])
            for literal in self._prefixes[match.group()] & awake:
                awake.discard(literal)
                end = start + len(literal)
                heapq.heappush(asleep, (end, literal))
                found += [(start, end)] * self._copies[literal]
            position = start + 1
        return found


def _prefix_literals(literals: Iterable[str]) -> dict[str, frozenset[str]]:
    """Per literal, the literals it starts with (itself included): what else matches where it does."""
    known = set(literals)
    lengths = sorted({len(literal) for literal in known})
    return {
        literal: frozenset(
            literal[:length] for length in lengths if length <= len(literal) and literal[:length] in known
        )
        for literal in known
    }
