"""Structure-aware, token-bounded chunking with overlap.

Blocks (headings, paragraphs, code) are split into sentences (lines for code; the ideographic full stop and
full-width marks end Chinese and Japanese sentences); a sentence longer than the limit is cut at word-piece
boundaries into pieces of the overlap's size, so that its chunks overlap like any others. Chunks are contiguous
spans of the extracted text packed greedily up to `max_tokens` word pieces of the embedding model's tokenizer; a
chunk closes before a heading once it holds at least `min_tokens`, so sections start fresh. The next chunk repeats up to `overlap_tokens` of
the previous chunk's last sentences, except across a section break.

Chunks are bounded in characters as well (`max_chars`): the tokenizer reads a word of more than 100
characters as one unknown word piece, so a DNA sequence or a hex dump of megabytes counted as one token
and became one chunk of megabytes, which no query answer could carry (gRPC's 4 MiB) and no prompt could hold.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from tokenizers import Tokenizer

from services.retrieval.extract import Block, Extracted


@dataclass(frozen=True)
class ChunkingOptions:
    #: all-MiniLM-L6-v2 reads at most 256 word pieces including [CLS]/[SEP]; 200 leaves a margin.
    max_tokens: int = 200
    overlap_tokens: int = 40
    min_tokens: int = 50
    #: About four times an English chunk of `max_tokens`: only text the model reads as few, long word pieces
    #: (unknown words, long runs of spaces) reaches it.
    max_chars: int = 4000

    @property
    def overlap_chars(self) -> int:
        """The characters an overlap may repeat: the share of `max_chars` that `overlap_tokens` is of the tokens."""
        return self.max_chars * self.overlap_tokens // self.max_tokens


@dataclass(frozen=True)
class Chunk:
    ordinal: int
    start: int
    end: int
    text: str
    tokens: int


@dataclass(frozen=True)
class _Unit:
    start: int
    end: int
    tokens: int
    heading: bool


# Line endings as sent: CRLF and CR too (extract.py keeps them in plain text and Markdown). Chinese and Japanese
# end sentences with full-width marks and no space after them (until 2026-12-06 a paragraph of theirs was one
# sentence, cut wherever its word pieces filled a chunk).
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|(?<=[\u3002\uff01\uff1f\uff1b\uff1a])\s*|[\r\n]+")
_LINE_END = re.compile(r"[\r\n]+")


def _sentences(text: str, block: Block) -> list[tuple[int, int]]:
    pattern = _LINE_END if block.kind == "code" else _SENTENCE_END
    spans = []
    position = block.start
    for match in pattern.finditer(text, block.start, block.end):
        if match.start() > position:
            spans.append((position, match.start()))
        position = match.end()
    if block.end > position:
        spans.append((position, block.end))
    return spans


#: How far a cut moves back to keep a character with its combining marks; a longer run of marks is no text.
_MAX_MARKS = 32


def _cut_point(text: str, start: int, limit: int) -> int:
    """Where a piece of `text` from `start` ends, at most at `limit` (< len(text)): after the last whitespace in
    the piece's second half, else before the character at `limit` or, when that is a combining mark, before the
    character it belongs to, so that no character is parted from its accents."""
    for position in range(limit - 1, (start + limit) // 2, -1):
        if text[position].isspace():
            return position + 1
    for cut in range(limit, max(start, limit - _MAX_MARKS), -1):
        if unicodedata.category(text[cut])[0] != "M":
            return cut
    return limit


def _bounded(text: str, spans: list[tuple[int, int]], max_chars: int) -> list[tuple[int, int]]:
    """`spans` with every span longer than `max_chars` characters cut into pieces of at most that."""
    pieces = []
    for start, end in spans:
        while end - start > max_chars:
            cut = _cut_point(text, start, start + max_chars)
            pieces.append((start, cut))
            start = cut
        pieces.append((start, end))
    return pieces


def _units(extracted: Extracted, tokenizer: Tokenizer, options: ChunkingOptions) -> list[_Unit]:
    text = extracted.text
    max_tokens = options.max_tokens
    spans: list[tuple[int, int, bool]] = []
    for block in extracted.blocks:
        sentences = _bounded(text, _sentences(text, block), options.max_chars)
        spans.extend((s, e, block.kind == "heading" and i == 0) for i, (s, e) in enumerate(sentences))
    encodings = tokenizer.encode_batch([text[s:e] for s, e, _ in spans], add_special_tokens=False)
    # A sentence too long for one chunk is cut into pieces of an overlap's size (at most half a chunk): overlap
    # repeats whole units, and with pieces of a whole chunk each (until 2026-12-06) consecutive chunks of a long
    # sentence shared nothing, so what a cut parted was whole in neither.
    piece = min(options.overlap_tokens, max_tokens // 2) or max_tokens
    units = []
    for (start, end, heading), encoding in zip(spans, encodings, strict=True):
        count = len(encoding.ids)
        if count <= max_tokens:
            units.append(_Unit(start, end, count, heading))
            continue
        # Cut at word-piece boundaries (offsets are relative to the sentence), before a word rather than inside
        # one when a word starts in the piece's second half: a chunk that starts inside a word counts its rest
        # as other, often more, word pieces than the whole word had.
        offsets, pieces = encoding.offsets, encoding.tokens
        first = 0
        while first < count:
            cut = min(first + piece, count)
            if cut < count:
                word_start = cut
                while word_start > first + max(1, piece // 2) and pieces[word_start].startswith("##"):
                    word_start -= 1
                if not pieces[word_start].startswith("##"):
                    cut = word_start
            piece_start = start + offsets[first][0]
            # The last piece ends where the sentence does: its span may go on past its last word piece (the
            # space before a cut of `_bounded`, marks the tokenizer drops), and no text may fall between chunks.
            piece_end = end if cut >= count else start + offsets[cut][0]
            units.append(_Unit(piece_start, piece_end, cut - first, heading and first == 0))
            first = cut
    return units


def chunk(extracted: Extracted, tokenizer: Tokenizer, options: ChunkingOptions | None = None) -> list[Chunk]:
    """The chunks of `extracted`, in order; never empty for text with at least one block.

    `tokenizer` must not truncate (`load_tokenizer(truncate=False)`), or long sentences are miscounted.
    """
    options = options or ChunkingOptions()
    units = _units(extracted, tokenizer, options)
    chunks: list[Chunk] = []
    i = 0
    while i < len(units):
        j, tokens = i, 0
        section_break = False
        while (
            j < len(units)
            and tokens + units[j].tokens <= options.max_tokens
            and (j == i or units[j].end - units[i].start <= options.max_chars)
        ):
            if j > i and units[j].heading and tokens >= options.min_tokens:
                section_break = True
                break
            tokens += units[j].tokens
            j += 1
        start, end = units[i].start, units[j - 1].end
        chunks.append(Chunk(len(chunks), start, end, extracted.text[start:end], tokens))
        if j >= len(units):
            break
        next_start = j
        if not section_break:
            overlap = 0
            while (
                next_start - 1 > i
                and overlap + units[next_start - 1].tokens <= options.overlap_tokens
                and units[j - 1].end - units[next_start - 1].start <= options.overlap_chars
            ):
                next_start -= 1
                overlap += units[next_start].tokens
        i = next_start
    return chunks
