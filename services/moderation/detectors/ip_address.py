"""IPv4 and IPv6 addresses, validated by the standard library's parser (octets ≤ 255, one `::`)."""

from __future__ import annotations

import ipaddress
import re

from services.moderation.detectors.base import C, Detection

_V4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_V6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:%\w+)?(?![\w:])")


class IpAddressDetector:
    name = "regex.ip_address"
    categories = (C.CATEGORY_PII_IP_ADDRESS,)
    max_span = 45  # the longest IPv6 text form
    max_tokens = 1
    priority = 70

    def detect(self, text: str) -> list[Detection]:
        found: list[Detection] = []
        if "." in text:
            for match in _V4.finditer(text):
                try:
                    ipaddress.IPv4Address(match.group())
                except ValueError:
                    continue
                found.append(
                    Detection(C.CATEGORY_PII_IP_ADDRESS, match.start(), match.end(), 0.95, self.name)
                )
        if "::" in text or text.count(":") >= 4:
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
