# ruff: noqa: RUF002 - passwords written in Arabic, Hebrew or Devanagari letters are what this module is about
"""Passwords: in connection strings (``scheme://user:password@host``) and in ``password=…`` assignments.

A password may hold letters of any script ("password: مرحبا2024", "pwd=नमस्ते123", "password=密码abc123"). Text of
a script written without spaces (``scripts.UNSPACED_LETTER``: Chinese, Japanese, Korean, Thai...) typed straight
after an assigned password is the next word, not part of it: "password=Hunter2です" is "Hunter2". So an
assignment's value ends where such text starts, once the value holds its four characters; a run of it that
starts within them belongs to the value ("password=abc密码123"). In the first version of this rule (2026-12-06)
every letter outside Latin, Greek, Cyrillic and Armenian ended a password, and the examples above were not
found at all. A URL's password ends at its "@", so it is taken whole in any script.
"""

from __future__ import annotations

import re

from services.moderation.detectors.base import C, Detection
from services.moderation.detectors.normalize import is_invisible
from services.moderation.detectors.scripts import UNSPACED_LETTER, after_last_non_value_letter

_SHORTEST = 4  # an assigned password's least length, and what text without spaces cannot cut
_KEYWORD = r"(?<![a-z])(?:password|passwd|pwd|pass|passwort|kennwort)"
_SCHEME = r"[a-zA-Z][a-zA-Z0-9+.-]{1,20}://"
# The fragments each pattern and its prefixes (below) are built from, so the two cannot drift apart.
_USER = r"[^\s:/@]{{{least},64}}"  # a URL's user name, up to its ":"
_URL_SECRET = r"[^\s@/]{{{least},128}}"  # a URL's password, up to its "@"
_OPERATOR = r"(?:[:=]|is)\s*[\"']?"  # after the keyword and any space: "password = '…", "pwd: …", "pass is …"
_ASSIGNED = r"[^\s\"';,]{{{least},128}}"  # an assigned password
_URL_PASSWORD = re.compile(rf"{_SCHEME}{_USER.format(least=1)}:({_URL_SECRET.format(least=1)})@[\w.-]+")
_ASSIGNMENT = re.compile(rf"(?i){_KEYWORD}\s*{_OPERATOR}({_ASSIGNED.format(least=_SHORTEST)})")
_UNSPACED_RUN = re.compile(f"(?<!{UNSPACED_LETTER}){UNSPACED_LETTER}")  # where a run of such text starts
_PLACEHOLDERS = {"****", "xxxx", "<password>", "password", "secret", "changeme", "${password}"}

# For a stream (``hold_floor``): where a match opens, and what follows an opening while its match is still
# open at the end of the text (each pattern's prefixes from there on).
_OPENING = re.compile(rf"(?i){_SCHEME}|{_KEYWORD}")
_URL_OPEN = re.compile(rf"{_USER.format(least=0)}(?::{_URL_SECRET.format(least=0)}@?)?")
_ASSIGNMENT_OPEN = re.compile(rf"(?i){_KEYWORD}\s*(?:{_OPERATOR}({_ASSIGNED.format(least=0)})|i)?")


def _assigned_length(value: str) -> int:
    """How much of what an assignment's pattern took is the password: up to text of a script written without
    spaces that starts after its first ``_SHORTEST`` characters."""
    if value.isascii():  # O(1): ASCII text holds none, and costs nothing more than before
        return len(value)
    # From the fifth character on; the look-behind still sees the fourth, so a run begun within them goes on.
    run = _UNSPACED_RUN.search(value, _SHORTEST)
    if run is None:
        return len(value)
    cut = run.start()
    while cut > _SHORTEST and is_invisible(value[cut - 1]):
        cut -= 1  # a zero-width space kept before the next word (``visible``) breaks the words, no password
    return cut


def _still_open(text: str, opening: re.Match[str], end: int) -> bool:
    """Whether the match ``opening`` opens could still take text after ``end``."""
    if opening.group().endswith("://"):
        return _URL_OPEN.fullmatch(text, opening.end(), end) is not None
    prefix = _ASSIGNMENT_OPEN.fullmatch(text, opening.start(), end)
    if prefix is None:
        return False
    value = prefix.group(1) or ""
    return _assigned_length(value) == len(value)  # not already ended by text without spaces


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

    @staticmethod
    def hold_floor(text: str, start: int, end: int) -> int:
        """Where in ``text[start:end]`` a password still in progress at ``end`` could start at the earliest.

        Chinese, Japanese or Thai prose is one whitespace-separated piece, which a stream would hold back as
        far as a password reaches (200 code points). A password may hold letters of any script, so the last
        letter outside the value scripts bounds it only when no match opened before that letter is still
        open: its scheme or keyword is ASCII, so it lies wholly before the letter, and is searched there.
        Bounded by the letter alone, a URL whose user name was Chinese or Arabic was released up to it, the
        scheme 64 code points of left context later fell out of sight, and the password went out as written.
        """
        floor = after_last_non_value_letter(text, start, end)
        for opening in _OPENING.finditer(text, start, floor):
            if _still_open(text, opening, end):
                return opening.start()
        return floor

    def detect(self, text: str) -> list[Detection]:
        found: list[Detection] = []
        if "://" in text:
            for url in _URL_PASSWORD.finditer(text):
                self._report(found, url.start(1), url.group(1), 1.0)
        lowered = text.lower()
        if any(n in lowered for n in ("pass", "pwd", "kennwort")):
            # Searched on from where each password ends, not where the pattern stopped: a value ended by text
            # without spaces left the rest of its run to the next search ("pwd=नमस्ते123です。password=…").
            position = 0
            while (assignment := _ASSIGNMENT.search(text, position)) is not None:
                start, value = assignment.start(1), assignment.group(1)
                value = value[: _assigned_length(value)]
                self._report(found, start, value, 0.9)
                position = start + len(value)
        return found

    def _report(self, found: list[Detection], start: int, value: str, score: float) -> None:
        if value.lower() in _PLACEHOLDERS or set(value) <= {"*", "x", "X", "•"}:
            return
        found.append(Detection(C.CATEGORY_SECRET_PASSWORD, start, start + len(value), score, self.name))
