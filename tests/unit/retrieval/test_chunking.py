"""Chunking: token bounds, overlap, section breaks, spans that match the extracted text."""

from __future__ import annotations

import itertools
import unicodedata

import pytest
from tokenizers import Tokenizer

from parapet.embeddings.minilm import load_tokenizer
from services.retrieval.chunking import Chunk, ChunkingOptions, chunk
from services.retrieval.extract import extract


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_tokenizer(truncate=False)


def _is_mark(character: str) -> bool:
    return unicodedata.category(character).startswith("M")


def _count(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def test_chunks_are_token_bounded_spans_with_overlap(tokenizer: Tokenizer) -> None:
    text = " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(300))
    extracted = extract(text.encode(), "text/plain")
    chunks = chunk(extracted, tokenizer, ChunkingOptions(max_tokens=120, overlap_tokens=30))
    assert len(chunks) > 5
    for c in chunks:
        assert c.text == extracted.text[c.start : c.end]
        assert _count(tokenizer, c.text) <= 120 + 2  # joins may merge a piece or two
    for previous, following in itertools.pairwise(chunks):
        assert following.start < previous.end, "consecutive chunks overlap"
        assert following.start > previous.start
    assert chunks[0].start == 0 and chunks[-1].end == len(extracted.text.rstrip())


def test_sections_start_new_chunks_without_overlap(tokenizer: Tokenizer) -> None:
    body = " ".join(f"Detail {i} of the first section." for i in range(15))
    source = f"# First\n\n{body}\n\n# Second\n\nShort second section.".encode()
    extracted = extract(source, "text/markdown")
    chunks = chunk(extracted, tokenizer, ChunkingOptions(max_tokens=200, overlap_tokens=40, min_tokens=20))
    assert [c.text.splitlines()[0] for c in chunks] == ["# First", "# Second"]
    assert chunks[1].start >= chunks[0].end


def test_a_sentence_longer_than_the_limit_is_cut(tokenizer: Tokenizer) -> None:
    extracted = extract(("word " * 1000).encode(), "text/plain")
    chunks = chunk(extracted, tokenizer, ChunkingOptions(max_tokens=100, overlap_tokens=0))
    assert len(chunks) == 10
    assert all(_count(tokenizer, c.text) <= 100 for c in chunks)
    assert "".join(extracted.text[c.start : c.end] for c in chunks).split() == extracted.text.split()


def test_small_document_is_one_chunk(tokenizer: Tokenizer) -> None:
    extracted = extract(b"Just one line.", "text/plain")
    (only,) = chunk(extracted, tokenizer)
    assert (only.ordinal, only.start, only.end, only.text) == (0, 0, 14, "Just one line.")


@pytest.mark.parametrize(
    "text",
    [
        "ACGT" * 250_000,  # one word of a million characters: one unknown word piece
        " ".join(["x" * 5000] * 100),  # many unknown words
        ("\u0e01\u0e32\u0e23" * 40 + " ") * 300,  # Thai: phrases of 120 characters without spaces
        "e" + "\u0301" * 10_000,  # one letter under ten thousand accents
        "caf\u00e9 e\u0301t\u00e9 " * 2000,  # combining accents that a cut must not part from their letter
    ],
)
def test_chunks_are_bounded_in_characters_however_few_word_pieces_they_hold(
    tokenizer: Tokenizer, text: str
) -> None:
    """Before, each of these was one chunk of the whole text (or a few huge ones): the tokenizer reads a word of
    over 100 characters as one [UNK] piece, so the token bound never applied."""
    extracted = extract(text.encode(), "text/plain")
    options = ChunkingOptions()
    chunks = chunk(extracted, tokenizer, options)
    assert all(len(c.text) <= options.max_chars for c in chunks)
    assert all(c.text == extracted.text[c.start : c.end] for c in chunks)
    assert chunks[0].start == 0 and chunks[-1].end == len(extracted.text.rstrip())
    for previous, following in itertools.pairwise(chunks):
        assert previous.start < following.start <= previous.end, "contiguous, overlapping at most"
        # A chunk starts with a combining mark only inside a run of marks with no letter near enough to keep.
        assert not _is_mark(extracted.text[following.start]) or _is_mark(extracted.text[following.start - 1])
    # Overlap never repeats a chunk's worth, even of text that counts no word pieces.
    bound = len(text) // options.max_chars + _count(tokenizer, text) // options.max_tokens
    assert len(chunks) <= 2 * bound + 2


LINE_ENDINGS = {"crlf": "\r\n", "cr": "\r", "lf": "\n"}


@pytest.mark.parametrize("mime", ["text/plain", "text/markdown"])
@pytest.mark.parametrize("newline", list(LINE_ENDINGS.values()), ids=list(LINE_ENDINGS))
def test_offsets_index_the_text_as_sent_whatever_its_line_endings(
    tokenizer: Tokenizer, newline: str, mime: str
) -> None:
    """A caller holding the document highlights a citation at its offsets. Until 2026-12-06 line endings were
    made LF first, so in a Windows (CRLF) document every citation pointed one character earlier per line
    before it; now plain text and Markdown keep their text as sent (HTML, no text as sent, is normalised as
    HTML5 does)."""
    lines = ["# Leave", "", "Staff get 25 days. Part-time staff get them pro rata.", "- Ask HR first.", ""]
    original = newline.join(lines * 3)
    extracted = extract(original.encode(), mime)
    assert extracted.text == original
    paragraph = ["Staff get 25 days. Part-time staff get them pro rata.", "- Ask HR first."]
    expected = ["# Leave", *paragraph] if mime == "text/markdown" else ["# Leave", newline.join(paragraph)]
    assert [original[b.start : b.end] for b in extracted.blocks] == expected * 3
    chunks = chunk(extracted, tokenizer, ChunkingOptions(max_tokens=12, overlap_tokens=4, min_tokens=4))
    assert len(chunks) > 3
    assert all(original[c.start : c.end] == c.text == c.text.strip() for c in chunks)


def _overlap_tokens(tokenizer: Tokenizer, text: str, previous: Chunk, following: Chunk) -> int:
    return _count(tokenizer, text[following.start : previous.end]) if following.start < previous.end else 0


@pytest.mark.parametrize(
    "text",
    [
        # One sentence of 1,500 words (a transcript, a log line, a table flattened to text).
        " ".join(f"item{i} weighs {i % 13} kilograms and ships from depot {i % 5}" for i in range(150)),
        # Japanese: sentences end with 。 and no space; until 2026-12-06 a paragraph was one sentence.
        "".join(
            f"第{i}条の規定により、供給者は注文から{i}日以内に部品を納入しなければならない。"
            for i in range(60)
        ),
    ],
    ids=["long-sentence", "japanese"],
)
def test_text_without_sentence_ends_the_chunker_knows_still_overlaps(tokenizer: Tokenizer, text: str) -> None:
    """Overlap repeats whole sentences (units). A sentence longer than a chunk was cut into pieces of a whole
    chunk each, so consecutive chunks shared nothing (what a cut parted was in neither whole); and 。 ended no
    sentence, so Japanese and Chinese paragraphs were such sentences."""
    options = ChunkingOptions(max_tokens=200, overlap_tokens=40)
    extracted = extract(text.encode(), "text/plain")
    chunks = chunk(extracted, tokenizer, options)
    assert len(chunks) >= 4
    for c in chunks:
        assert c.text == extracted.text[c.start : c.end]
        assert c.tokens == _count(tokenizer, c.text) <= options.max_tokens
    for previous, following in itertools.pairwise(chunks):
        assert previous.start < following.start < previous.end
        assert 0 < _overlap_tokens(tokenizer, extracted.text, previous, following) <= options.overlap_tokens


def test_japanese_chunks_end_at_sentence_ends(tokenizer: Tokenizer) -> None:
    text = "".join(
        f"第{i}条の規定により、供給者は注文から{i}日以内に部品を納入しなければならない。" for i in range(60)
    )
    chunks = chunk(extract(text.encode(), "text/plain"), tokenizer, ChunkingOptions())
    assert len(chunks) >= 4 and all(c.text.startswith("第") and c.text.endswith("。") for c in chunks)
