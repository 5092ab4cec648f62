"""Passwords: in connection strings (``scheme://user:password@host``) and in ``password=…`` assignments."""

from __future__ import annotations

import re

from services.moderation.detectors.base import C, Detection

_URL_PASSWORD = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]{1,20}://[^\s:/@]{1,64}:([^\s@/]{1,128})@[\w.-]+")
_ASSIGNMENT = re.compile(
    r"(?i)(?<![a-z])(?:password|passwd|pwd|pass|passwort|kennwort)\s*(?:[:=]|is)\s*[\"']?([^\s\"';,]{4,128})"
)
_PLACEHOLDERS = {"****", "xxxx", "<password>", "password", "secret", "changeme", "${password}"}


class PasswordDetector:
    name = "regex.password"
    categories = (C.CATEGORY_SECRET_PASSWORD,)
    max_span = 200
    max_tokens = 4
    lead = 1  # a URL with credentials is one piece; an assignment opens with its keyword

    @staticmethod
    def is_anchor(piece: str) -> bool:
        lowered = piece.lower()
        return "://" in piece or "pass" in lowered or "pwd" in lowered or "kennwort" in lowered

    priority = 96

    def detect(self, text: str) -> list[Detection]:
        found: list[Detection] = []
        lowered = text.lower()
        gated = (
            (_URL_PASSWORD, 1.0, "://" in text),
            (_ASSIGNMENT, 0.9, any(n in lowered for n in ("pass", "pwd", "kennwort"))),
        )
        for pattern, score, wanted in gated:
            if not wanted:
                continue
            for match in pattern.finditer(text):
                value = match.group(1)
                if value.lower() in _PLACEHOLDERS or set(value) <= {"*", "x", "X", "•"}:
                    continue
                found.append(
                    Detection(C.CATEGORY_SECRET_PASSWORD, match.start(1), match.end(1), score, self.name)
                )
        return found
