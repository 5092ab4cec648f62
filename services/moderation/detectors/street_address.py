# ruff: noqa: RUF001 - look-alike characters are what this module is about
"""Street addresses, by structure: a street line (number and street-type word, in either order, in the
forms of English and continental European addresses), unit, PO box and military forms, extended over
the city, region, postcode and country lines that follow it.
"""

from __future__ import annotations

import re

from services.moderation.detectors.base import C, Detection
from services.moderation.detectors.scripts import WORD, after_last_non_value_letter, class_body

# Edges of words and numbers: Unicode's \b and \w took a letter of Japanese, Chinese, Korean or Thai for part
# of the word, so "住所は1600 Pennsylvania Avenueです" held no address; a word here is one of the scripts street
# names are written in (``scripts``), and on ASCII text these are \b and \w as before.
_START = rf"(?<![{WORD}])"  # \b before a word character
_END = rf"(?![{WORD}])"  # \b after one
_WORD = rf"[A-ZÀ-ÖØ-Þa-zß-öø-ÿ][{WORD}'’.-]*"
_CAP = rf"[A-ZÀ-ÖØ-Þ0-9][{WORD}'’.-]*"
_SUFFIX_EN = (
    r"Street|St|Road|Rd|Avenue|Ave|Av|Boulevard|Blvd|Lane|Ln|Drive|Dr|Way|Court|Ct|Place|Pl|Square|Sq|Terrace|"
    r"Trail|Trl|Parkway|Pkwy|Highway|Hwy|Circle|Cir|Crescent|Close|Grove|Gardens|Row|Mews|Hill|Walk|Alley|"
    r"Plaza|Quay|Wharf|Esplanade|Parade|Loop|Pike|Run|Path|Point|Ridge|Park|Green|View|Heights|Estate|Dam|Rise"
)
# Street-type words written as suffixes of the street name (Pfarrgasse, Koskikatu, Hammarvägen) or before it.
_SUFFIX_GLUED = (
    r"strasse|straße|str\.|gasse|weg|platz|allee|ring|damm|ufer|markt|steig|katu|kuja|tie|polku|gatan|vägen|"
    r"gränd|gade|vej|stræde|straat|laan|gracht|plein|kade|veien|gata|utca|tér|ulica|cesta|iela|gatve|tee"
)
# Street-type words standing after the street name and before the number (Piroska u. 97, Erzsébet tér 19).
_SUFFIX_BEFORE_NUMBER = (
    r"u\.|utca|tér|út|kapu|str\.?|strasse|straße|gasse|weg|platz|allee|gade|vej|väg|gata|katu|tie"
)
_PREFIX = (
    r"rue|avenue|boulevard|chemin|place|via|viale|piazza|corso|calle|avenida|carrer|rua|travessa|ul\.|ulica|"
    r"al\.|aleja|r\.|pl\.|bd|av\."
)
_STREET = re.compile(
    # 12 Main Street / 338 17 St Omers Road / 615 Benedum Drive
    rf"{_START}\d{{1,6}}[A-Za-z]?(?:[ -]\d{{1,5}})?\s+(?:{_CAP}\s+){{0,4}}(?i:{_SUFFIX_EN}){_END}\.?(?:\s+(?:{_CAP}))?"
    # (6750) Koskikatu 25 / Pfarrgasse 91 / Hammarvägen 15
    rf"|(?:{_START}\d{{1,6}}\s+)?{_START}{_WORD}(?i:{_SUFFIX_GLUED})\s+\d{{1,5}}[a-zA-Z]?{_END}"
    # 35108 ul. Zamkowa 33 / rue de la Paix 4 / Via Roma 1
    rf"|(?:{_START}\d{{1,6}}\s+)?{_START}(?i:{_PREFIX})\s+(?:{_WORD}\s+){{1,4}}?\d{{1,5}}[a-zA-Z]?{_END}"
    # 5 rue de la Paix / 12 Via Roma
    rf"|{_START}\d{{1,5}}[a-zA-Z]?,?\s+(?i:{_PREFIX})\s+(?:{_WORD}\s*){{1,4}}"
    # (6076) Piroska u. 97 / Erzsébet tér 19 / Eleftheriou Venizelou str 159
    rf"|(?:{_START}\d{{1,6}}\s+)?{_CAP}(?:\s+{_CAP}){{0,2}}\s+(?i:{_SUFFIX_BEFORE_NUMBER}){_END}\s*\d{{1,5}}{_END}\.?"
)
# After a word that announces an address ("lives at", "address:", "ship to"), a capitalised street name and
# a house number are enough (Allika 46, 971 Kesk 53, Joaquin Suarez 2906).
_ANNOUNCED = re.compile(
    r"(?i:address(?:\s+is)?|adresse|lives?\s+(?:at|on|in)|located\s+at|sent\s+to|send\s+(?:it\s+)?to|ship\s+(?:it\s+)?to|"
    r"deliver\s+(?:it\s+)?to|moved\s+to|wohn(?:e|t)\s+in|side\s+of)\s*:?\s+(?:[A-Z][a-z]+\s+){0,3}?\n?\s*"
    rf"((?:\d{{1,6}}\s+)?{_CAP}(?:\s+{_CAP}){{0,3}}\s+\d{{1,5}}[a-zA-Z]?{_END})"
)
_UNIT = re.compile(
    rf"{_START}(?:Apt|Apartment|Suite|Ste|Unit|Flat|Room|Floor|Fl)\.?\s*#?\s*\d{{1,5}}[A-Za-z]?{_END}",
    re.IGNORECASE,
)
_PO_BOX = re.compile(
    rf"{_START}(?:P\.?\s?O\.?\s?Box|Postfach|PSC\s+\d{{3,5}},?\s+Box)\s+\d{{1,6}}{_END}", re.IGNORECASE
)
_MILITARY = re.compile(
    rf"{_START}(?:USNS|USNV|USS|USCGC)\s+[A-Z][a-z]+{_END}|{_START}(?:FPO|APO|DPO)\s+(?:AE|AA|AP)\s+\d{{5}}{_END}"
)
# After a street line: more lines of the same address (unit, city, region code, postcode, country).
_TAIL_PART = re.compile(
    rf"(?:\s*[,\n]\s*|\s+)(?:(?:Apt|Apartment|Suite|Ste|Unit|Flat)\.?\s*#?\d{{1,5}}[{WORD}]?|\d{{4,6}}|[A-Z]{{1,2}}\d[A-Z\d]?\s?\d[A-Z]{{2}}"
    rf"|[A-Z]{{2}}(?=[^{WORD}])|{_CAP}(?:[ -]{_CAP}){{0,2}}(?:\s\([{WORD}]+\))?)"
)
_MAX_TAIL = 5


def _extend(text: str, end: int) -> int:
    """Extend an address over the parts that follow it, stopping at a sentence or a lower-case word."""
    for _ in range(_MAX_TAIL):
        match = _TAIL_PART.match(text, end)
        if match is None or match.end() - end > 40:
            break
        separator = text[end : match.start() + (len(match.group()) - len(match.group().lstrip(" ,\n")))]
        # Without a comma or line break only a unit or postcode continues the address.
        if (
            "," not in separator
            and "\n" not in separator
            and not match.group().strip()[:1].isdigit()
            and not re.match(r"\s*(?:apt|apartment|suite|ste|unit|flat)\b", match.group(), re.IGNORECASE)
        ):
            break
        end = match.end()
    return end


class StreetAddressDetector:
    name = "regex.street_address"
    categories = (C.CATEGORY_PII_STREET_ADDRESS,)
    max_span = 200
    max_tokens = 24
    priority = 30
    # Words of the scripts street names are written in (``scripts``).
    hold_floor = staticmethod(after_last_non_value_letter)
    # Every form has, among its first five pieces, a number, a street-type, prefix or unit word, or a
    # military code (at most a house number and three capitalised words come before "tér" in
    # "6076 Erzsébet Kovács tér 19", four capitalised words before the number after "lives at").
    lead = 5

    @staticmethod
    def may_lead(piece: str) -> bool:
        """What can stand before the anchor in a match: a house number or capitalised name words. A name word
        may start inside a piece, at a capital ("cafePiroska u. 97" holds the address "Piroska u. 97"), so a
        capital anywhere counts: asked of the piece's first letter only, the stream released "cafePiroska "
        before "u. 97" came, and then the rest of the address as written."""
        return any(c.isupper() or c.isdigit() for c in piece)

    @staticmethod
    def is_anchor(piece: str) -> bool:
        if any(c.isdigit() for c in piece):
            return True
        for part in _words(piece):
            bare = part.lower().rstrip(".")
            if (
                bare in _SUFFIX_WORDS
                or bare in _PREFIX_WORDS
                or bare in _UNIT_WORDS
                or bare in _MILITARY_WORDS
                or (len(bare) > 4 and bare.endswith(_GLUED_ENDINGS))
            ):
                return True
        return False

    def detect(self, text: str) -> list[Detection]:
        found: dict[tuple[int, int], Detection] = {}
        military = any(word in text for word in _MILITARY_NEEDLES)  # a substring test before the regex
        for match in _MILITARY.finditer(text) if military else ():
            end = _extend(text, match.end())
            found[(match.start(), end)] = Detection(self.categories[0], match.start(), end, 0.85, self.name)
        if any(word in text for word in _ANNOUNCING):
            for match in _ANNOUNCED.finditer(text):
                end = _extend(text, match.end(1))
                found.setdefault(
                    (match.start(1), end), Detection(self.categories[0], match.start(1), end, 0.7, self.name)
                )
        # Every other form holds a street-type word: scan only around those, which keeps prose cheap.
        for start, stop in _windows(text):
            for pattern, score, extend in ((_STREET, 0.85, True), (_PO_BOX, 0.9, True), (_UNIT, 0.6, False)):
                for match in pattern.finditer(text, start, stop):
                    end = _extend(text, match.end()) if extend else match.end()
                    found.setdefault(
                        (match.start(), end),
                        Detection(self.categories[0], match.start(), end, score, self.name),
                    )
        return list(found.values())


_SUFFIX_WORDS = frozenset(_SUFFIX_EN.lower().split("|")) | frozenset(
    w.replace("\\", "").rstrip(".?") for w in _SUFFIX_BEFORE_NUMBER.split("|")
)
_ANNOUNCING = (
    "ddress",
    "dresse",
    "live",
    "located",
    "sent to",
    "send",
    "ship",
    "deliver",
    "moved",
    "wohn",
    "side of",
)
_PREFIX_WORDS = frozenset(p.rstrip(".").replace("\\", "") for p in _PREFIX.lower().split("|"))
_GLUED_ENDINGS = tuple(e.rstrip(".").replace("\\", "") for e in _SUFFIX_GLUED.split("|"))
_UNIT_WORDS = frozenset(
    ("apt", "apartment", "suite", "ste", "unit", "flat", "room", "floor", "fl", "box", "postfach")
)
_MILITARY_WORDS = frozenset(("usns", "usnv", "uss", "uscgc", "fpo", "apo", "dpo", "psc"))
_MILITARY_NEEDLES = ("USNS", "USNV", "USS", "USCGC", "FPO", "APO", "DPO")  # what _MILITARY must contain
# What ends a street word besides whitespace, in the patterns and in ``_windows``' pieces alike. "!", "?" and
# '"' end one as they end it in the patterns: "Do you deliver to 12 Main Street?" held no window.
_SEPARATORS = ',;:()!?"'
# Pieces between whitespace and the separators by str methods (separators to spaces, then str.split, whose
# whitespace is the regex engine's \s): a third of the cost of a regex for pieces between them.
_PIECE_SEPARATORS = str.maketrans(_SEPARATORS, " " * len(_SEPARATORS))
# What a piece is made of: the characters of the scripts street names are written in, but for those
# separators. Beyond ASCII anything else ends a piece too: a letter or mark of a script written without
# spaces ("住所は1600 Pennsylvania Avenueです"), CJK punctuation ("Avenue。"), a dash or a symbol.
_IN_PIECE = class_body(lambda c: not c.isspace() and c not in _SEPARATORS)
_NOT_IN_PIECE = re.compile(f"[^{_IN_PIECE}]")
# Below this every code point is of the value scripts, so only whitespace and the separators, which the
# split cuts at anyway, are not in a piece.
_FIRST_BEYOND_VALUE_SCRIPTS = "\u0590"
_BEFORE, _AFTER = 120, 100  # a house number precedes a street type by a few words; unit and number follow it


def _words(text: str) -> list[str]:
    """``text`` split into the words ``_windows`` looks up: at whitespace, the separators and, beyond ASCII,
    every character no street word holds. A stream's piece is cut the same way ("。Apt" and '"Apt' are the
    street word "Apt", which the stream must hold back as the detector will find it). Text below U+0590 (ASCII,
    Latin-1 and Latin Extended-A/B, IPA, Greek, Cyrillic, Armenian) skips that regex (a ``max``, C speed), as
    the split alone cuts it where the regex would; Vietnamese or full-width Latin still runs it. Run on every
    piece, the regex made each 4-character chunk of a French answer cost 4 µs more than an English one."""
    if not text.isascii() and max(text) >= _FIRST_BEYOND_VALUE_SCRIPTS:
        text = _NOT_IN_PIECE.sub(" ", text)
    return text.translate(_PIECE_SEPARATORS).split()


def _windows(text: str) -> list[tuple[int, int]]:
    """Stretches around street-type words (Road, -gasse, rue, Apt, Box): the only places an address can be.

    A word-by-word set lookup is much cheaper than running the address patterns over all of a long text.
    """
    hits = {
        word
        for word in set(_words(text.lower()))
        if (bare := word.rstrip(".")) in _SUFFIX_WORDS
        or bare in _PREFIX_WORDS
        or bare in _UNIT_WORDS
        or (len(bare) > 4 and bare.endswith(_GLUED_ENDINGS))
    }
    if not hits:
        return []
    # Unique words are checked once; only the few hits are located again.
    located = re.compile(
        f"(?<![{_IN_PIECE}])(?:" + "|".join(map(re.escape, hits)) + f")(?![{_IN_PIECE}])", re.IGNORECASE
    )
    windows: list[tuple[int, int]] = []
    for match in located.finditer(text):  # positions in the text itself (lower() may change lengths)
        start, stop = max(0, match.start() - _BEFORE), min(len(text), match.end() + _AFTER)
        if windows and start <= windows[-1][1]:
            windows[-1] = (windows[-1][0], stop)
        else:
            windows.append((start, stop))
    return windows
