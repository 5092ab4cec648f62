"""Context words near a candidate: "card", "IBAN", "phone" before a number make it far more likely real."""

from __future__ import annotations

import re
from collections.abc import Iterable

WINDOW = 48  # code points looked at on each side; a label sits within a few words of its value


def context_pattern(words: Iterable[str]) -> re.Pattern[str]:
    return re.compile(r"(?<![a-z])(?:" + "|".join(re.escape(w) for w in words) + r")", re.IGNORECASE)


def near(text: str, start: int, end: int, pattern: re.Pattern[str], window: int = WINDOW) -> bool:
    return pattern.search(text, max(0, start - window), start) is not None or (
        pattern.search(text, end, min(len(text), end + window // 2)) is not None
    )
