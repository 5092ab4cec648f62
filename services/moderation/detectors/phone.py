# ruff: noqa: RUF001 - look-alike characters are what this module is about
"""Telephone numbers, national and international, scored by shape and by context words.

Phone numbers have no checksum, so shape carries the evidence: a ``+`` country code, an area code in
parentheses or the separators of a dialling plan (3-3-4, 2-2-2-2, 4-3-3) score high; a bare run of
digits counts only next to a word like "phone" or "call". Dates, times and year ranges are excluded.
"""

from __future__ import annotations

import re

from services.moderation.detectors.base import C, Detection
from services.moderation.detectors.context import WINDOW, context_pattern, near
from services.moderation.detectors.forms import ascii_forms
from services.moderation.detectors.scripts import after_last_non_value_letter

# The leading "(?=[+(\d])" names the characters a match can start with, so the regex engine skips ahead to
# them instead of running the look-behind at every position (a third faster on prose).
_CANDIDATE = re.compile(
    r"(?=[+(\d])(?<![\w+./:-])(?:\+|00)?(?:\d{1,4}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{1,12}(?:(?:[ .-]|\s?-\s?)\d{2,12}){0,5}"
    r"(?:\s?(?:x|ext\.?)\s?\d{1,5})?(?![\w:]|[.-]\d)",
    re.ASCII,  # the text is in ``ascii_forms``; a letter of a script written without spaces ends no number
)
_CONTEXT = context_pattern(
    ("phone", "tel", "call", "mobile", "cell", "fax", "number", "reach", "whatsapp", "contact", "dial",
     "sms", "text me", "hotline", "telefon", "handy", "rufnummer", "nummer", "anrufen", "ruf", "mob",
     "landline", "office", "ph.", "no.", "#")
)  # fmt: skip
# Dates (ISO, European, US) anywhere in a candidate, and year ranges: digits and dashes, but no phone.
# Labels of other numbers: a digit run after them is not a phone number.
_OTHER_NUMBER = context_pattern(
    ("license", "licence", "account", "order", "invoice", "passport", "serial", "policy", "tracking", "card",
     "iban", "ssn", "social security", "routing", "isbn", "ticket", "kontonummer", "ausweis")
)  # fmt: skip
_DATE = re.compile(
    r"(?:^|\D)(?:(?:19|20)\d\d[./-][01]?\d[./-][0-3]?\d|[0-3]?\d[./-][01]?\d[./-](?:19|20)\d\d)(?:\D|$)"
    r"|^(?:19|20)\d\d\s?[-–]\s?(?:19|20)?\d\d$"
)


def _score(raw: str, digits: str, context: bool, other: bool) -> float:
    separators = sum(1 for c in raw if c in " .-")
    international = raw.startswith(("+", "00"))
    area_code = "(" in raw
    if international or area_code:
        score = 0.8
    elif separators >= 2:
        score = 0.7
    elif separators == 1:
        score = 0.5 if len(digits) >= 10 else 0.45
    else:
        score = 0.3 if len(digits) >= 10 else 0.0
    if other:
        return score - 0.3  # "license number 2270-66-1551": the label names another kind of number
    if context:
        score += 0.25
    return min(score, 1.0)


class PhoneDetector:
    name = "regex.phone"
    categories = (C.CATEGORY_PII_PHONE,)
    max_span = 32
    max_tokens = 7
    lookahead = WINDOW // 2  # context words after the value count too
    lead = 1  # the first piece of a match holds a digit (a leading "+", "(" or "00" is glued to it)

    @staticmethod
    def is_anchor(piece: str) -> bool:
        return any(c.isdigit() for c in piece)

    priority = 40
    hold_floor = staticmethod(after_last_non_value_letter)  # digits and separators, read as ASCII
    threshold = 0.5

    def detect(self, text: str) -> list[Detection]:
        found: list[Detection] = []
        text = ascii_forms(text)
        for match in _CANDIDATE.finditer(text):
            raw = match.group().strip()
            digits = "".join(c for c in raw if c.isdigit())
            if not 7 <= len(digits) <= 15 or _DATE.search(raw) or len(set(digits)) < 3:
                continue
            start = match.start() + (len(match.group()) - len(match.group().lstrip()))
            end = start + len(raw)
            other = _OTHER_NUMBER.search(text, max(0, start - 32), start) is not None
            score = _score(raw, digits, near(text, start, end, _CONTEXT), other)
            if score >= self.threshold:
                found.append(Detection(C.CATEGORY_PII_PHONE, start, end, score, self.name))
        return found
