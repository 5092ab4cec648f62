"""The one small protocol every detector implements, and the typed finding it returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeAlias

from parapet.moderation.v1 import category_pb2

Category: TypeAlias = category_pb2.Category.ValueType


@dataclass(frozen=True, slots=True)
class Detection:
    """One thing found in a text: what, where (code points, end exclusive), how sure, and by whom."""

    category: Category
    start: int
    end: int
    score: float
    detector: str


class Detector(Protocol):
    """Finds one family of things in a text.

    ``max_span`` bounds the length (code points) and ``max_tokens`` the number of whitespace-separated
    pieces of anything the detector reports. Streamed screening holds back only the tail that could still
    be the start of a match (the last ``max_tokens`` pieces, at most ``max_span - 1`` code points), so a
    match split over chunks is still seen whole. A detector may narrow that with ``lead`` and
    ``is_anchor(piece)``: every match has, among its first ``lead`` pieces, one that ``is_anchor`` accepts
    (so prose without a digit need not wait for a phone number's seven pieces). ``priority``
    settles overlaps: a checksum-validated card number beats the phone number that looks the same.
    ``hold_floor(text, start, end)`` says where in ``text[start:end]`` one of its matches still in progress at
    ``end`` could start at the earliest, so a stream holds nothing back before it (Japanese prose, one
    whitespace-separated piece, is released as it comes). A detector whose values hold no letter outside the
    value scripts (``scripts.NON_VALUE_LETTER``: Arabic, Hebrew, CJK, kana, Hangul, Thai...), and whose text
    read before its value lies within the stream's left context, sets
    ``hold_floor = staticmethod(scripts.after_last_non_value_letter)``: none is in progress before the last such
    letter. The password detector, whose values may hold such letters, has its own. Without one, a match may
    start anywhere within ``max_span``.

    ``detect`` is given the text without the invisible characters typed inside values (``visible``), and
    the spans it returns are mapped back to the text as written; ``max_span`` and ``max_tokens`` count in
    that text too. A detector that weighs invisible characters as evidence sets ``reads_invisible = True``
    and gets the text as written (the injection detector).
    """

    # Read-only members, so plain class attributes satisfy them.
    @property
    def name(self) -> str: ...
    @property
    def categories(self) -> tuple[Category, ...]: ...
    @property
    def max_span(self) -> int: ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def priority(self) -> int: ...

    def detect(self, text: str) -> list[Detection]:
        """Everything this detector finds in ``text``, in any order."""
        ...


C = category_pb2  # short alias for the category constants in detector modules
# ``max_span`` of detectors whose matches are bounded in words only: any amount of whitespace or invisible
# characters may stand between the words, so only ``max_tokens`` bounds what a stream holds back.
ANY_LENGTH = 1 << 62
