"""Passwords: in connection strings (``scheme://user:password@host``) and in ``password=…`` assignments."""

from __future__ import annotations

import re

from services.moderation.detectors.base import C, Detection
from services.moderation.detectors.scripts import NOT_OTHER_LETTER, WORD


def _but(excluded: str) -> str:
    """One character of a secret: anything but ``excluded`` and a letter of a script written without spaces.
    A password typed in Japanese or Thai text runs straight into the next word ("password=Hunter2です"): the
    value took that word with it, and a stream had to hold such text back as long as a password can be."""
    return f"(?:(?![{excluded}]){NOT_OTHER_LETTER})"


# The user name before the password is not reported, and may be in any script.
_SECRET, _VALUE = _but(r"\s@/"), _but(r"\s\"';,")
_URL_PASSWORD = re.compile(
    rf"[a-zA-Z][a-zA-Z0-9+.-]{{1,20}}://[^\s:/@]{{1,64}}:({_SECRET}{{1,128}})@[{WORD}.-]+"
)
_ASSIGNMENT = re.compile(
    rf"(?i)(?<![a-z])(?:password|passwd|pwd|pass|passwort|kennwort)\s*(?:[:=]|is)\s*[\"']?({_VALUE}{{4,128}})"
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
    ends_at_other_scripts = True  # see ``_but``

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
