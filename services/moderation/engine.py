"""Screening one text: run detectors, settle overlaps, apply the policy's actions, build the sanitised text."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from parapet.kit import metrics
from parapet.moderation.v1 import category_pb2 as C
from parapet.moderation.v1 import finding_pb2
from services.moderation.detectors.base import Detection, Detector
from services.moderation.masking import MaskingVault, redaction
from services.moderation.policy import Policy

# Categories whose findings are values inside the text (replaced when masked or redacted); they compete
# for spans. Attacks, leaks and topics describe the text as a whole and never suppress a value finding.
VALUE_CATEGORIES = frozenset(
    {
        C.CATEGORY_PII_EMAIL, C.CATEGORY_PII_PHONE, C.CATEGORY_PII_CREDIT_CARD, C.CATEGORY_PII_IBAN,
        C.CATEGORY_PII_US_SSN, C.CATEGORY_PII_IP_ADDRESS, C.CATEGORY_PII_PERSON_NAME,
        C.CATEGORY_PII_STREET_ADDRESS, C.CATEGORY_SECRET_API_KEY, C.CATEGORY_SECRET_PRIVATE_KEY,
        C.CATEGORY_SECRET_JWT, C.CATEGORY_SECRET_PASSWORD, C.CATEGORY_BLOCKED_TERM,
    }
)  # fmt: skip


@dataclass
class Applied:
    """A detection with the action the policy gives it and its replacement text ("" = left as is)."""

    detection: Detection
    action: int
    replacement: str = ""


@dataclass
class Screened:
    decision: int
    text: str
    applied: list[Applied] = field(default_factory=list)

    def findings(self, text_index: int = 0, offset: int = 0) -> list[finding_pb2.Finding]:
        return [to_finding(a, text_index, offset) for a in self.applied]


def to_finding(applied: Applied, text_index: int = 0, offset: int = 0) -> finding_pb2.Finding:
    d = applied.detection
    return finding_pb2.Finding(
        category=d.category,
        detector=d.detector,
        text_index=text_index,
        start_offset=d.start + offset,
        end_offset=d.end + offset,
        score=d.score,
        action=applied.action,  # type: ignore[arg-type]
        replacement=applied.replacement,
    )


def settle_overlaps(detections: Iterable[Detection], priorities: dict[str, int]) -> list[Detection]:
    """Value findings that overlap keep the strongest (detector priority, then score, then length)."""
    kept: list[Detection] = []
    values = sorted(
        (d for d in detections if d.category in VALUE_CATEGORIES),
        key=lambda d: (-priorities.get(d.detector, 0), -d.score, d.start - d.end),
    )
    taken: list[tuple[int, int]] = []
    for d in values:
        if all(d.end <= s or d.start >= e for s, e in taken):
            kept.append(d)
            taken.append((d.start, d.end))
    kept += [d for d in detections if d.category not in VALUE_CATEGORIES]
    return sorted(kept, key=lambda d: (d.start, d.end))


def detect_all(detectors: Sequence[Detector], text: str) -> list[Detection]:
    found: list[Detection] = []
    for detector in detectors:
        found.extend(detector.detect(text))
    return settle_overlaps(found, priority_table(detectors))


def priority_table(detectors: Sequence[Detector]) -> dict[str, int]:
    table = {d.name: d.priority for d in detectors}
    table.setdefault("cue.person", table.get("ner.spacy", 20))
    return table


def decide(applied: Sequence[Applied]) -> int:
    if any(a.action == C.ACTION_BLOCK for a in applied):
        return finding_pb2.DECISION_BLOCK
    return finding_pb2.DECISION_MODIFIED if applied else finding_pb2.DECISION_PASS


def apply_policy(
    text: str, detections: Sequence[Detection], policy: Policy, vault: MaskingVault | None
) -> Screened:
    """Act on ``detections`` of ``text``: MASK needs a ``vault`` (input side); without one (output side)
    a masked value is redacted, because nobody could unmask it later."""
    applied: list[Applied] = []
    pieces: list[str] = []
    cursor = 0
    for d in detections:
        action = policy.action(d.category)
        if action == C.ACTION_ALLOW:
            continue
        item = Applied(d, action)
        applied.append(item)
        if action not in (C.ACTION_MASK, C.ACTION_REDACT) or d.start < cursor:
            continue  # overlapping a value already replaced (an attack span around a PII value)
        value = text[d.start : d.end]
        item.replacement = (
            vault.mask(d.category, value)
            if action == C.ACTION_MASK and vault is not None
            else redaction(d.category)
        )
        pieces.append(text[cursor : d.start])
        pieces.append(item.replacement)
        cursor = d.end
    pieces.append(text[cursor:])
    decision = decide(applied)
    return Screened(decision, "" if decision == finding_pb2.DECISION_BLOCK else "".join(pieces), applied)


def record_findings(findings: Iterable[finding_pb2.Finding], stage: str) -> None:
    """Findings by category and action (enum value names: a bounded set), once each, when they are final."""
    tally = Counter((f.category, f.action) for f in findings)
    for (category, action), count in tally.items():
        metrics.record_moderation_finding(C.Category.Name(category), C.Action.Name(action), stage, count)
