"""IBANs: country code, check digits and account, optionally in groups of four, mod-97 valid (ISO 13616)."""

from __future__ import annotations

import re

from services.moderation.detectors.base import C, Detection
from services.moderation.detectors.forms import ascii_forms
from services.moderation.detectors.scripts import after_last_non_value_letter

_OPENING = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}")
_CANDIDATE = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11,30}(?![A-Za-z0-9])")

# Lengths per country (SWIFT IBAN registry); a country not listed is accepted at any valid length.
_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24,
    "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21,
    "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31,
    "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VA": 22,
    "VG": 24, "XK": 20,
}  # fmt: skip


def iban_valid(compact: str) -> bool:
    compact = compact.upper()
    if not 15 <= len(compact) <= 34 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    expected = _LENGTHS.get(compact[:2])
    if expected is not None and expected != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(char, 36)) for char in rearranged)
    return int(number) % 97 == 1


class IbanDetector:
    name = "regex.iban"
    categories = (C.CATEGORY_PII_IBAN,)
    max_span = 42  # 34 characters and spaces every four
    max_tokens = 9
    lead = 1  # an IBAN opens with its country code and check digits, in one piece

    @staticmethod
    def is_anchor(piece: str) -> bool:
        return _OPENING.search(ascii_forms(piece)) is not None

    priority = 95
    hold_floor = staticmethod(after_last_non_value_letter)  # ASCII letters and digits

    def detect(self, text: str) -> list[Detection]:
        found: list[Detection] = []
        text = ascii_forms(text)
        for match in _CANDIDATE.finditer(text):
            # Printed IBANs group by four; a shorter group ends it (the rest is the next word or number).
            parts = match.group().split(" ")
            if len(parts[0]) != 4:
                parts = parts[:1]
            else:
                kept = [parts[0]]
                for part in parts[1:]:
                    kept.append(part)
                    if len(part) != 4:
                        break
                parts = kept
            raw = " ".join(parts)
            compact = raw.replace(" ", "")
            # A candidate may run into the next word: shrink it to the longest valid IBAN.
            end = len(compact)
            while end >= 15 and not iban_valid(compact[:end]):
                end -= 1
            if end < 15:
                continue
            span_end = match.start()
            kept_chars = 0
            for char in raw:
                span_end += 1
                if char != " ":
                    kept_chars += 1
                if kept_chars == end:
                    break
            found.append(Detection(C.CATEGORY_PII_IBAN, match.start(), span_end, 1.0, self.name))
        return found
