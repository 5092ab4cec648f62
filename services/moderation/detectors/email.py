"""E-mail addresses (RFC 5322's common subset: dotted local part, a domain with a letter TLD)."""

from __future__ import annotations

import re

from services.moderation.detectors.base import C, Detection

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)


_LOCAL_MAX = 64
_DOMAIN_MAX = 253


class EmailDetector:
    name = "regex.email"
    categories = (C.CATEGORY_PII_EMAIL,)
    max_span = 254  # RFC 5321 path limit
    max_tokens = 1
    priority = 60

    def detect(self, text: str) -> list[Detection]:
        # The pattern is tried only around each "@" (a local part is at most 64 code points): scanning the
        # whole text tried it at every letter of every word.
        found: dict[int, Detection] = {}
        at = text.find("@")
        while at != -1:
            for m in _EMAIL.finditer(text, max(0, at - _LOCAL_MAX), min(len(text), at + _DOMAIN_MAX + 1)):
                found.setdefault(
                    m.start(), Detection(C.CATEGORY_PII_EMAIL, m.start(), m.end(), 1.0, self.name)
                )
            at = text.find("@", at + 1)
        return list(found.values())
