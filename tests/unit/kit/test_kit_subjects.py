"""NATS subject matching, by which ``Bus.publish`` finds the declared stream to declare again."""

from __future__ import annotations

import pytest

from parapet.kit.bus import subject_matches


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("parapet.jobs.v1.run", "parapet.jobs.v1.run", True),
        ("parapet.jobs.v1.run", "parapet.jobs.v1.runs", False),
        ("parapet.jobs.v1.run", "parapet.jobs.v1", False),
        ("parapet.jobs.v1.run", "parapet.jobs.v1.run.now", False),
        # `*` is exactly one token.
        ("parapet.audit.v1.*", "parapet.audit.v1.acme", True),
        ("parapet.audit.v1.*", "parapet.audit.v1", False),
        ("parapet.audit.v1.*", "parapet.audit.v1.rejected.acme", False),
        ("parapet.*.v1.acme", "parapet.audit.v1.acme", True),
        ("parapet.*.v1.acme", "parapet.audit.v2.acme", False),
        ("*", "acme", True),
        ("*", "acme.corp", False),
        # `>` is one token or more, at the end.
        ("parapet.usage.v1.>", "parapet.usage.v1.acme", True),
        ("parapet.usage.v1.>", "parapet.usage.v1.acme.eu.west", True),
        ("parapet.usage.v1.>", "parapet.usage.v1", False),
        ("parapet.*.>", "parapet.usage.v1", True),
        ("parapet.*.>", "parapet.usage", False),
        (">", "anything.at.all", True),
        # Tokens compare whole: a prefix of a token is no match.
        ("parapet.audit.v1.*", "parapet.audit.v10.acme", False),
        ("parapet.aud*.v1.acme", "parapet.audit.v1.acme", False),
    ],
)
def test_subject_matching_follows_nats_tokens(pattern: str, subject: str, matches: bool) -> None:
    assert subject_matches(pattern, subject) is matches
