"""Private keys in PEM, OpenSSH and PGP armour, from the BEGIN line to the END line."""

from __future__ import annotations

import re

from services.moderation.detectors.base import C, Detection
from services.moderation.detectors.scripts import after_last_non_value_letter

_BEGIN = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?)-----")
MAX_KEY_LENGTH = 16384  # an RSA-8192 PEM is about 6.4 KB; PGP blocks with subkeys are larger


class PrivateKeyDetector:
    """A key is reported from its BEGIN line; an END line that has not arrived yet extends it to the text's end.

    Reporting an unterminated block keeps a key cut off by a length limit (or still streaming in) from
    leaking its first part.
    """

    name = "regex.private_key"
    categories = (C.CATEGORY_SECRET_PRIVATE_KEY,)
    max_span = 64  # the BEGIN line: once it is seen, the stream withholds the rest (see stream.py)
    max_tokens = 5
    lead = 1  # the BEGIN line opens with "-----BEGIN"

    @staticmethod
    def is_anchor(piece: str) -> bool:
        return "-----BEGIN" in piece

    priority = 99
    # The BEGIN line is ASCII; once it is complete, the block it opens is held as a finding that may grow.
    hold_floor = staticmethod(after_last_non_value_letter)

    def detect(self, text: str) -> list[Detection]:
        found: list[Detection] = []
        if "-----BEGIN" not in text:
            return found
        for match in _BEGIN.finditer(text):
            end_marker = f"-----END {match.group(1)}-----"
            end = text.find(end_marker, match.end(), match.start() + MAX_KEY_LENGTH)
            # No END line (yet): the block runs to the text's end, but never past the longest key, so a
            # BEGIN line followed by prose cannot withhold (and have rescanned) the rest of a long answer.
            stop = min(len(text), match.start() + MAX_KEY_LENGTH) if end < 0 else end + len(end_marker)
            found.append(Detection(C.CATEGORY_SECRET_PRIVATE_KEY, match.start(), stop, 1.0, self.name))
        return found
