"""Which detectors screen what: input (attacks, PII with the NER model, secrets, tenant terms and topics)
and output (PII patterns, secrets, protected-text leaks, tenant terms and topics).

Built once per process; the NER pipeline inside is the process's single copy. Detectors for a tenant's
blocked terms and topics are cached per policy content, since policies change rarely.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from parapet.moderation.v1 import category_pb2 as C
from services.moderation.detectors import Detector, pattern_detectors
from services.moderation.detectors.blocked import BlockedTermDetector, BlockedTopicDetector
from services.moderation.detectors.forms import translation
from services.moderation.detectors.injection import InjectionDetector
from services.moderation.detectors.leak import LeakDetector
from services.moderation.detectors.person_name import PersonNameDetector
from services.moderation.engine import Screened, apply_policy, detect_all, passive_categories
from services.moderation.masking import MaskingVault
from services.moderation.policy import Policy


class Screener:
    def __init__(self, *, ner: bool = True, injection_threshold: float = 0.5) -> None:
        self.patterns: tuple[Detector, ...] = pattern_detectors()
        translation()  # the pattern detectors' full-width table (about 50 ms, once): now, not in a request
        self.injection = InjectionDetector(injection_threshold)
        self.names: PersonNameDetector | None = PersonNameDetector() if ner else None

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one Screener per process; policies are few
    def _policy_detectors(self, topics: tuple[str, ...], terms: tuple[str, ...]) -> tuple[Detector, ...]:
        found: list[Detector] = []
        if terms:
            found.append(BlockedTermDetector(terms))
        if topics:
            found.append(BlockedTopicDetector(topics))
        return tuple(found)

    def input_detectors(self, policy: Policy) -> list[Detector]:
        detectors: list[Detector] = [self.injection, *self.patterns]
        # The NER model is by far the costliest detector: a tenant that allows names does not pay for it.
        if self.names is not None and policy.action(C.CATEGORY_PII_PERSON_NAME) != C.ACTION_ALLOW:
            detectors.append(self.names)
        detectors += self._policy_detectors(policy.blocked_topics, policy.blocked_terms)
        return detectors

    def output_detectors(self, policy: Policy, protected_texts: Sequence[str]) -> list[Detector]:
        detectors: list[Detector] = [*self.patterns]
        if any(t.strip() for t in protected_texts):
            detectors.append(LeakDetector(protected_texts))
        detectors += self._policy_detectors(policy.blocked_topics, policy.blocked_terms)
        return detectors

    def screen_input(self, text: str, policy: Policy, vault: MaskingVault) -> Screened:
        detectors = self.input_detectors(policy)
        return apply_policy(text, detect_all(detectors, text, passive_categories(policy)), policy, vault)

    def screen_output(self, text: str, policy: Policy, protected_texts: Sequence[str]) -> Screened:
        detectors = self.output_detectors(policy, protected_texts)
        return apply_policy(text, detect_all(detectors, text, passive_categories(policy)), policy, None)
