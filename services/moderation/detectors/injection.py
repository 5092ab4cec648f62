# ruff: noqa: RUF002 - look-alike characters are what this module is about
"""Prompt injection and jailbreak attempts, with evasion undone first.

The text is folded (lower case, invisible characters dropped, homoglyphs and compatibility forms mapped
to Latin) before the phrase rules in ``injection_rules`` run, so "ІGNORE previous instructions" with a
Cyrillic І or zero-width spaces reads as plain English. Base64 and hex runs are decoded and screened
too: a payload hidden in an encoding is a jailbreak even when the decoded words alone would only be an
injection. Evidence from several rules adds up (1 - Π(1 - w)); the finding's span covers the matched
phrases.
"""

from __future__ import annotations

import base64
import binascii
import re

from services.moderation.detectors.base import C, Category, Detection
from services.moderation.detectors.injection_rules import RULES, anchors_in, applicable
from services.moderation.detectors.normalize import (
    TokenStart,
    count_invisible,
    count_single_characters,
    fold,
    may_spell_out,
    mixed_script_words,
)
from services.moderation.detectors.visible import visible

THRESHOLD = 0.5
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{16,}={0,2}(?![A-Za-z0-9+/=])")
_HEX = re.compile(r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}[ :]?){12,}(?![0-9A-Fa-f])")
# Ten or more letters spelled out one by one ("s a y t h a t …"): a way past word-based filters.
_SPELLED_OUT = re.compile(r"(?<!\w)(?:\w {1,2}){9,}\w(?!\w)")
_SPELLED_WEIGHT = 0.55
_SMUGGLING_WEIGHT = 0.35  # invisible characters or mixed-script words: evasion, not an attack by itself


_LONG_TOKEN = TokenStart(r"\S{16,}")
_HEX_PAIR = TokenStart(r"[0-9A-Fa-f]{2}(?!\S)")


def _encoded_runs(text: str) -> list[tuple[re.Match[str], bool]]:
    """Base64 and hex runs: searched inside 16+ character tokens only, and for spaced hex ("49 67 6e …")
    only when a dozen two-character hex tokens are present (English prose has dozens of two-letter words,
    which made the whole-text hex scan run on every long prompt)."""
    runs: list[tuple[re.Match[str], bool]] = []
    for start, end in _LONG_TOKEN.spans(text):
        for pattern, hex_form in ((_BASE64, False), (_HEX, True)):
            runs += [(match, hex_form) for match in pattern.finditer(text, start, end)]
    if _HEX_PAIR.count(text) >= 12:
        runs += [(match, True) for match in _HEX.finditer(text) if " " in match.group()]
    return runs


def _decode(raw: str, hex_form: bool) -> str | None:
    try:
        data = (
            bytes.fromhex(re.sub(r"[ :]", "", raw))
            if hex_form
            else base64.b64decode(raw + "=" * (-len(raw) % 4))
        )
        decoded = data.decode("utf-8")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    printable = sum(1 for c in decoded if c.isprintable() or c.isspace())
    return decoded if decoded and printable / len(decoded) > 0.9 and " " in decoded else None


def _score(text: str) -> tuple[float, Category, int, int]:
    """Combined score over the folded ``text``, the leading category and the matched extent."""
    miss = 1.0
    weights: dict[Category, float] = {}
    start, end = len(text), 0
    present = anchors_in(text)
    for rule in RULES:
        if not applicable(rule, present, text):
            continue
        match = rule.pattern.search(text)
        if match is None:
            continue
        miss *= 1.0 - rule.weight
        weights[rule.category] = max(weights.get(rule.category, 0.0), rule.weight)
        start, end = min(start, match.start()), max(end, match.end())
    if not weights:
        return 0.0, C.CATEGORY_PROMPT_INJECTION, 0, 0
    category = max(weights, key=lambda c: (weights[c], c == C.CATEGORY_PROMPT_INJECTION))
    return 1.0 - miss, category, start, end


class InjectionDetector:
    name = "injection.heuristic"
    categories = (C.CATEGORY_PROMPT_INJECTION, C.CATEGORY_JAILBREAK)
    max_span = 4096  # input-side only: whole prompts are screened at once, never streamed
    max_tokens = 1000
    priority = 10
    # Given the text as written (engine.detect_all): invisible characters are evidence of smuggling here, and
    # ``fold`` drops them for the phrase rules itself. Encoded runs are read in ``visible`` text below.
    reads_invisible = True

    def __init__(self, threshold: float = THRESHOLD) -> None:
        self.threshold = threshold

    def detect(self, text: str) -> list[Detection]:
        folded, index = fold(text)
        score, category, start, end = _score(folded)
        found: list[Detection] = []
        smuggling = count_invisible(text) >= 3 or mixed_script_words(text) >= 1
        if smuggling and score > 0:
            # Hiding the words of an attack is itself a jailbreak technique.
            score = 1.0 - (1.0 - score) * (1.0 - _SMUGGLING_WEIGHT)
            category = C.CATEGORY_JAILBREAK
        spelled_out = may_spell_out(text) and count_single_characters(text) >= 10
        spelled = _SPELLED_OUT.search(text) if spelled_out else None
        if spelled is not None:
            score = 1.0 - (1.0 - score) * (1.0 - _SPELLED_WEIGHT)
            category = C.CATEGORY_JAILBREAK
            start, end = 0, len(folded)  # the spelled-out run hides the words: the whole text is the finding
        if score >= self.threshold:
            found.append(Detection(category, index[start], index[end], round(score, 3), self.name))
        # A zero-width space inside a base64 payload cut it into two runs, neither of which decoded to the
        # attack: runs are searched in the text without invisible characters and mapped back.
        view = visible(text)
        for match, hex_form in _encoded_runs(text if view is None else view.text):
            decoded = _decode(match.group(), hex_form)
            if decoded is None:
                continue
            inner, _, _, _ = _score(fold(decoded)[0])
            if inner >= self.threshold or (inner > 0 and score > 0):
                boosted = 1.0 - (1.0 - inner) * 0.5
                run_start, run_end = match.span() if view is None else view.span(*match.span())
                found.append(
                    Detection(C.CATEGORY_JAILBREAK, run_start, run_end, round(boosted, 3), self.name)
                )
        return found
