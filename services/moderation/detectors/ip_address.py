"""IPv4 and IPv6 addresses, validated by the standard library's parser (octets ≤ 255, one `::`)."""

from __future__ import annotations

import ipaddress
import re

from services.moderation.detectors.base import C, Detection
from services.moderation.detectors.forms import ascii_forms
from services.moderation.detectors.scripts import after_last_non_value_letter

# Starts with a digit class, the boundary check after it, so the regex engine skips ahead to digits.
_V4 = re.compile(
    r"\d(?<![\w.]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?![\w]|\.\d)", re.ASCII
)  # on ``ascii_forms``
# ASCII classes as for IPv4: a letter of a script written without spaces ("サーバー2001:db8::1に") is no part
# of an address (Unicode's \w took it for one, and the address was not found).
_V6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:%\w+)?(?![\w:])", re.ASCII)
# Every IPv6 text form holds two colons at most four hex digits apart; a literal-led search finds that
# (or its absence) fifty times faster than the full pattern, whose look-behind runs at every position.
_V6_HINT = re.compile(r":[0-9A-Fa-f]{0,4}:")


class IpAddressDetector:
    name = "regex.ip_address"
    categories = (C.CATEGORY_PII_IP_ADDRESS,)
    max_span = 45  # the longest IPv6 text form
    max_tokens = 1
    priority = 70
    hold_floor = staticmethod(after_last_non_value_letter)  # hex digits, dots, colons and an ASCII zone

    def detect(self, text: str) -> list[Detection]:
        found: list[Detection] = []
        text = ascii_forms(text)
        if "." in text:
            for match in _V4.finditer(text):
                try:
                    ipaddress.IPv4Address(match.group())
                except ValueError:
                    continue
                found.append(
                    Detection(C.CATEGORY_PII_IP_ADDRESS, match.start(), match.end(), 0.95, self.name)
                )
        if ("::" in text or text.count(":") >= 4) and _V6_HINT.search(text):
            for match in _V6.finditer(text):
                candidate = match.group()
                if candidate.count(":") < 2 or not any(c.isalnum() for c in candidate):
                    continue
                try:
                    ipaddress.IPv6Address(candidate.split("%")[0])
                except ValueError:
                    continue
                found.append(Detection(C.CATEGORY_PII_IP_ADDRESS, match.start(), match.end(), 0.9, self.name))
        return found
