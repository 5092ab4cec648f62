"""API keys and access tokens of common providers, by their documented prefixes and lengths.

Provider formats are distinctive enough to need no context; a generic ``api_key = "…"`` assignment
catches keys of providers not listed, when the value looks random (letters and digits mixed).
"""

from __future__ import annotations

import re

from services.moderation.detectors.base import C, Detection
from services.moderation.detectors.scripts import after_last_non_value_letter

# (provider, literal every key of it contains, pattern): the literal is a cheap test before the regex runs.
_PROVIDERS: tuple[tuple[str, tuple[str, ...], re.Pattern[str]], ...] = tuple(
    (name, needles, re.compile(r"(?<![A-Za-z0-9_-])" + pattern + r"(?![A-Za-z0-9_-])"))
    for name, needles, pattern in (
        ("anthropic", ("sk-ant-",), r"sk-ant-(?:api|admin)\d{2}-[A-Za-z0-9_-]{80,120}"),
        ("openai", ("sk-",), r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,200}"),
        ("aws_access_key", ("AKIA", "ASIA", "ABIA", "ACCA"), r"(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}"),
        (
            "github",
            ("gh", "github_pat_"),
            r"(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{60,120})",
        ),
        ("gitlab", ("glpat-",), r"glpat-[A-Za-z0-9_-]{20,}"),
        ("slack", ("xox",), r"xox[abposr]-[A-Za-z0-9-]{10,200}"),
        ("stripe", ("_live_", "_test_"), r"(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,99}"),
        ("google", ("AIza",), r"AIza[0-9A-Za-z_-]{35}"),
        ("sendgrid", ("SG.",), r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}"),
        ("huggingface", ("hf_",), r"hf_[A-Za-z0-9]{34,40}"),
        ("twilio", ("SK",), r"SK[0-9a-f]{32}"),
        ("npm", ("npm_",), r"npm_[A-Za-z0-9]{36}"),
        ("azure_storage", ("AccountKey=",), r"AccountKey=[A-Za-z0-9+/]{86}=="),
    )
)
_GENERIC = re.compile(
    r"(?i)(?:api[_-]?key|apikey|access[_-]?token|secret[_-]?key|client[_-]?secret|auth[_-]?token|x-api-key)"
    r"[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9_\-+/=.]{16,200})"
)
_AWS_SECRET = re.compile(r"(?i)aws.{0,20}secret.{0,20}?[:=]\s*[\"']?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])")


def _looks_random(value: str) -> bool:
    return any(c.isdigit() for c in value) and any(c.isalpha() for c in value) and len(set(value)) >= 8


class ApiKeyDetector:
    name = "regex.api_key"
    categories = (C.CATEGORY_SECRET_API_KEY,)
    max_span = 256
    # A reported key is one piece, the value; what announces it ("api_key =") is read in the left
    # context the stream keeps, so nothing before the value needs holding back.
    max_tokens = 1
    priority = 97
    # The value reported is ASCII; what announces it is read in the left context.
    hold_floor = staticmethod(after_last_non_value_letter)

    def detect(self, text: str) -> list[Detection]:
        found: list[Detection] = []
        taken: set[int] = set()  # starts already reported: the most specific provider pattern wins
        for provider, needles, pattern in _PROVIDERS:
            if not any(needle in text for needle in needles):
                continue
            for match in pattern.finditer(text):
                if match.start() in taken or (provider == "openai" and not _looks_random(match.group()[3:])):
                    continue  # "sk-learn-is-a-library" is prose, not a key
                taken.add(match.start())
                found.append(Detection(C.CATEGORY_SECRET_API_KEY, match.start(), match.end(), 1.0, self.name))
        lowered = text.lower()
        gated = (
            (_GENERIC, any(n in lowered for n in ("api", "access", "secret", "client", "auth"))),
            (_AWS_SECRET, "aws" in lowered and "secret" in lowered),
        )
        for pattern in (p for p, wanted in gated if wanted):
            for match in pattern.finditer(text):
                if _looks_random(match.group(1)):
                    found.append(
                        Detection(C.CATEGORY_SECRET_API_KEY, match.start(1), match.end(1), 0.9, self.name)
                    )
        return found
