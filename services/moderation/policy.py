"""The tenant's moderation policy as the service applies it: one action per category, blocked topics and terms.

Categories without a rule (or with ACTION_UNSPECIFIED) use the service defaults below: refuse attacks and
leaks, mask personal data reversibly, redact secrets (a secret must never reach a provider, and has no
business coming back either).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from parapet.auth.v1 import tenant_policy_pb2
from parapet.moderation.v1 import category_pb2 as C

DEFAULT_ACTIONS: Mapping[int, int] = MappingProxyType(
    {
        C.CATEGORY_PROMPT_INJECTION: C.ACTION_BLOCK,
        C.CATEGORY_JAILBREAK: C.ACTION_BLOCK,
        C.CATEGORY_PII_EMAIL: C.ACTION_MASK,
        C.CATEGORY_PII_PHONE: C.ACTION_MASK,
        C.CATEGORY_PII_CREDIT_CARD: C.ACTION_MASK,
        C.CATEGORY_PII_IBAN: C.ACTION_MASK,
        C.CATEGORY_PII_US_SSN: C.ACTION_MASK,
        C.CATEGORY_PII_IP_ADDRESS: C.ACTION_MASK,
        C.CATEGORY_PII_PERSON_NAME: C.ACTION_MASK,
        C.CATEGORY_PII_STREET_ADDRESS: C.ACTION_MASK,
        C.CATEGORY_SECRET_API_KEY: C.ACTION_REDACT,
        C.CATEGORY_SECRET_PRIVATE_KEY: C.ACTION_REDACT,
        C.CATEGORY_SECRET_JWT: C.ACTION_REDACT,
        C.CATEGORY_SECRET_PASSWORD: C.ACTION_REDACT,
        C.CATEGORY_SYSTEM_PROMPT_LEAK: C.ACTION_BLOCK,
        C.CATEGORY_BLOCKED_TOPIC: C.ACTION_BLOCK,
        C.CATEGORY_BLOCKED_TERM: C.ACTION_BLOCK,
    }
)

_KNOWN_ACTIONS = frozenset(C.Action.values())


@dataclass(frozen=True)
class Policy:
    """What moderation does for one tenant. ``version`` 0 = the service defaults (no tenant policy)."""

    actions: Mapping[int, int] = field(default_factory=lambda: DEFAULT_ACTIONS)
    blocked_topics: tuple[str, ...] = ()
    blocked_terms: tuple[str, ...] = ()
    version: int = 0

    def action(self, category: int) -> int:
        return self.actions.get(category, DEFAULT_ACTIONS.get(category, C.ACTION_FLAG))

    @classmethod
    def from_proto(cls, moderation: tenant_policy_pb2.ModerationPolicy, version: int) -> Policy:
        actions = dict(DEFAULT_ACTIONS)
        for rule in moderation.rules:
            if rule.action != C.ACTION_UNSPECIFIED and rule.category != C.CATEGORY_UNSPECIFIED:
                # An action a newer contract declares and this service cannot carry out: refuse what it
                # covers rather than pass it on untouched (screening fails closed, as without a policy).
                actions[rule.category] = rule.action if rule.action in _KNOWN_ACTIONS else C.ACTION_BLOCK
        return cls(
            actions=MappingProxyType(actions),
            blocked_topics=tuple(t for t in moderation.blocked_topics if t.strip()),
            blocked_terms=tuple(t for t in moderation.blocked_terms if t.strip()),
            version=version,
        )


DEFAULT_POLICY = Policy()
