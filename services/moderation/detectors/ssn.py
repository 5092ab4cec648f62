"""US social security numbers: AAA-GG-SSSS with the SSA's validity rules, context for unseparated ones."""

from __future__ import annotations

import re

from services.moderation.detectors.base import C, Detection
from services.moderation.detectors.context import WINDOW, context_pattern, near
from services.moderation.detectors.forms import ascii_forms
from services.moderation.detectors.scripts import after_last_non_value_letter

# Starts with a digit class, the boundary check after it, so the regex engine skips ahead to digits.
_CANDIDATE = re.compile(
    r"(\d(?<![\w-]\d)\d\d)([- ]?)(\d{2})\2(\d{4})(?![\w]|-\d)", re.ASCII
)  # on ``ascii_forms``
_CONTEXT = context_pattern(("ssn", "social security", "social sec", "ss#", "ss #", "taxpayer", "tin"))
# Numbers the SSA never issues or that were published as examples (Woolworth's wallet card, ads).
_NEVER = {"078051120", "219099999", "123456789", "457555462"}


def ssn_valid(area: str, group: str, serial: str) -> bool:
    # Since 2011 numbers are random except area 000, 666 and 900-999, group 00 and serial 0000.
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return area + group + serial not in _NEVER and len(set(area + group + serial)) > 1


class SsnDetector:
    name = "regex.us_ssn"
    categories = (C.CATEGORY_PII_US_SSN,)
    max_span = 11
    max_tokens = 3
    lookahead = WINDOW // 2  # context words after the value count too
    lead = 1  # the first piece of a match holds a digit (a leading "+", "(" or "00" is glued to it)

    @staticmethod
    def is_anchor(piece: str) -> bool:
        return any(c.isdigit() for c in piece)

    priority = 80
    hold_floor = staticmethod(after_last_non_value_letter)  # digits and dashes, read as ASCII

    def detect(self, text: str) -> list[Detection]:
        found: list[Detection] = []
        text = ascii_forms(text)
        for match in _CANDIDATE.finditer(text):
            area, separator, group, serial = match.groups()
            if not ssn_valid(area, group, serial):
                continue
            context = near(text, match.start(), match.end(), _CONTEXT)
            if separator == "-":
                score = 1.0 if context else 0.85
            elif context:
                score = 0.8  # nine bare digits or space-separated ones are an SSN only when labelled
            else:
                continue
            found.append(Detection(C.CATEGORY_PII_US_SSN, match.start(), match.end(), score, self.name))
        return found
