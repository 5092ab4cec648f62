"""JSON Web Tokens: three base64url parts whose header decodes to JSON with an ``alg``."""

from __future__ import annotations

import base64
import binascii
import json
import re

from services.moderation.detectors.base import C, Detection
from services.moderation.detectors.scripts import after_last_non_value_letter

# "eyJ" is base64url for '{"': every JWT header starts with it.
_JWT = re.compile(
    r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{5,2000}\.eyJ[A-Za-z0-9_-]{2,8000}\.[A-Za-z0-9_-]{0,1000}"
)


def _header_ok(segment: str) -> bool:
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and "alg" in header


class JwtDetector:
    name = "regex.jwt"
    categories = (C.CATEGORY_SECRET_JWT,)
    max_span = 10000
    max_tokens = 1
    priority = 98
    hold_floor = staticmethod(after_last_non_value_letter)  # base64url

    def detect(self, text: str) -> list[Detection]:
        if "eyJ" not in text:
            return []
        return [
            Detection(C.CATEGORY_SECRET_JWT, m.start(), m.end(), 1.0, self.name)
            for m in _JWT.finditer(text)
            if _header_ok(m.group().split(".", 1)[0])
        ]
