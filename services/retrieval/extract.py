"""Turns a document's bytes into plain text with structural blocks (headings, paragraphs, code).

Offsets (citations, chunk spans) index the extracted text in Unicode code points. Plain text and Markdown
keep their text as sent, line endings included, so offsets point into the caller's own copy (Markdown: a
reader recognises it, and the model reads it fine); HTML becomes its visible text, block elements on their
own lines, head/script/style dropped, entities decoded.

Extraction runs in a worker thread that cannot be cancelled, on documents of up to 3 MiB, so every step
is linear in the input: no pass re-reads text already emitted, and no regular expression can backtrack
over a whole line.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from html import unescape
from html.parser import HTMLParser

MIME_TYPES = ("text/plain", "text/markdown", "text/html")
#: A document's own title (HTML <title>, first Markdown heading) is cut here: it is stored and repeated in
#: every citation, and an unclosed <title> would otherwise make the whole page its title.
MAX_TITLE_CHARS = 1024


class ExtractionError(Exception):
    """The document cannot be used; `reason` is its ErrorInfo reason (docs/contracts.md)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Block:
    """A structural unit of the text: [start, end) in code points."""

    start: int
    end: int
    #: "heading", "code" or "text". A heading starts a new section: chunks prefer to break before it.
    kind: str = "text"


@dataclass(frozen=True)
class Extracted:
    text: str
    blocks: list[Block]
    #: The document's own title (HTML <title>, first Markdown heading), used when the caller gave none.
    title: str = ""


def decode(content: bytes) -> str:
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ExtractionError(
            "DOCUMENT_UNDECODABLE", f"content is not valid UTF-8 (byte {error.start}: {error.reason})"
        ) from error
    if "\x00" in text:
        raise ExtractionError(
            "DOCUMENT_UNDECODABLE", "content contains NUL characters: binary data, not text"
        )
    # Line endings stay as sent (CRLF, CR or LF): offsets into plain text and Markdown must point at the
    # characters of the caller's own copy.
    return text


def media_type(mime_type: str) -> str:
    """The media type without parameters, lower case: what decides how content is extracted."""
    return mime_type.split(";", 1)[0].strip().lower()


def extract(content: bytes, mime_type: str) -> Extracted:
    """The text and blocks of `content`; raises `ExtractionError` for unusable input."""
    media = media_type(mime_type)
    if media not in MIME_TYPES:
        raise ExtractionError(
            "MIME_TYPE_UNSUPPORTED", f"mime_type {mime_type!r} is not one of {', '.join(MIME_TYPES)}"
        )
    if not content:
        raise ExtractionError("DOCUMENT_EMPTY", "content is empty")
    text = decode(content)
    if media == "text/html":
        extracted = _html(text)
    elif media == "text/markdown":
        extracted = _markdown(text)
    else:
        extracted = Extracted(text, _paragraphs(text, 0, len(text)))
    if not extracted.blocks:
        raise ExtractionError("DOCUMENT_EMPTY", "content has no visible text after extraction")
    return extracted


def _visible_character(char: str) -> bool:
    """Whether a reader sees `char`: a letter, number, punctuation, symbol (emoji too) or private-use character
    (icon fonts draw them). Not: separators (Z), controls (Cc), format characters (Cf: zero-width space, joiners,
    byte order mark, soft hyphen, bidirectional marks, tags), marks (M), which show only on a base character,
    and unassigned code points (Cn)."""
    category = unicodedata.category(char)
    return category[0] in "LNPS" or category == "Co"


def _visible(text: str, start: int, end: int) -> bool:
    """Whether `text[start:end]` has a character anyone can see: a block without one is no text. Counting only
    whitespace as nothing stored documents of zero-width or control characters as one chunk the model reads as
    no word piece at all. Stops at the first visible character, so a real block costs it a character or two."""
    return any(_visible_character(text[i]) for i in range(start, end))


def has_visible_text(text: str) -> bool:
    """Whether `text` holds a character anyone can see (the rule of a document's blocks, for a question too)."""
    return _visible(text, 0, len(text))


def _trimmed(text: str, start: int, end: int, kind: str) -> Block | None:
    """The block `[start, end)` without surrounding whitespace, or None when it has no visible text."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return Block(start, end, kind) if _visible(text, start, end) else None


#: A line ending: CRLF, CR or LF (a CR before an LF is never a line of its own).
_NEWLINE = r"(?:\r\n|\r(?!\n)|\n)"
_BLANK_LINE = re.compile(_NEWLINE + r"[ \t]*" + _NEWLINE)


def _lines(text: str) -> Iterator[tuple[int, int]]:
    """`(start, end)` of each line of `text`, without its line ending."""
    position = 0
    for match in re.finditer(_NEWLINE, text):
        yield position, match.start()
        position = match.end()
    yield position, len(text)


def _paragraphs(text: str, start: int, end: int) -> list[Block]:
    blocks = []
    position = start
    for match in _BLANK_LINE.finditer(text[start:end]):
        block = _trimmed(text, position, start + match.start(), "text")
        if block:
            blocks.append(block)
        position = start + match.end()
    block = _trimmed(text, position, end, "text")
    if block:
        blocks.append(block)
    return blocks


# Only the start of a heading line is matched: `(.+?)[ \t#]*$` backtracked over the whole line, which
# made a long line of spaces quadratic. The closing #s are stripped by `_heading_text`.
_HEADING = re.compile(r"^#{1,6}[ \t].")
_FENCE = re.compile(r"^[ \t]*(```|~~~)")
_LIST_ITEM = re.compile(r"^[ \t]*([-*+]|\d+[.)])[ \t]+")


def _heading_text(line: str) -> str:
    """The text of an ATX heading line: without its opening and closing #s."""
    return line.lstrip("#").rstrip(" \t#").strip()


def _markdown(text: str) -> Extracted:
    blocks: list[Block] = []
    title = ""
    paragraph_start: int | None = None
    fence_start: int | None = None
    fence = ""

    def close_paragraph(end: int) -> None:
        nonlocal paragraph_start
        if paragraph_start is not None:
            block = _trimmed(text, paragraph_start, end, "text")
            if block:
                blocks.append(block)
            paragraph_start = None

    for line_start, line_end in _lines(text):
        line = text[line_start:line_end]
        if fence_start is not None:
            if line.strip().startswith(fence):
                block = _trimmed(text, fence_start, line_end, "code")
                if block:
                    blocks.append(block)
                fence_start = None
            continue
        fence_match = _FENCE.match(line)
        if fence_match:
            close_paragraph(line_start)
            fence_start, fence = line_start, fence_match.group(1)
            continue
        heading = _HEADING.match(line)
        if heading:
            close_paragraph(line_start)
            block = _trimmed(text, line_start, line_end, "heading")
            if block:
                blocks.append(block)
            title = title or _heading_text(line)[:MAX_TITLE_CHARS]
            continue
        if not line.strip():
            close_paragraph(line_start)
            continue
        if _LIST_ITEM.match(line):
            close_paragraph(line_start)
        if paragraph_start is None:
            paragraph_start = line_start
    if fence_start is not None:  # an unclosed fence runs to the end
        block = _trimmed(text, fence_start, len(text), "code")
        if block:
            blocks.append(block)
    close_paragraph(len(text))
    return Extracted(text, blocks, title)


_BLOCK_TAGS = frozenset(
    [
        "address",
        "article",
        "aside",
        "blockquote",
        "body",
        "br",
        "dd",
        "div",
        "dl",
        "dt",
        "figcaption",
        "figure",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "table",
        "tbody",
        "td",
        "tfoot",
        "th",
        "thead",
        "tr",
        "ul",
    ]
)
_HEADINGS = frozenset(["h1", "h2", "h3", "h4", "h5", "h6"])
_SKIPPED = frozenset(["script", "style", "noscript", "template", "svg"])
#: What HTML5 keeps in the head ("in head" insertion mode); any other start tag, or text, ends it. `</head>` is
#: optional, so counting the head as skipped up to its end tag hid the whole body of a page that omits it.
_HEAD_TAGS = frozenset(
    [
        "html",
        "head",
        "title",
        "base",
        "basefont",
        "bgsound",
        "link",
        "meta",
        "noframes",
        "noscript",
        "script",
        "style",
        "template",
    ]
)
#: End tags that end the head in HTML5; others inside it are ignored.
_HEAD_ENDING_END_TAGS = frozenset(["head", "body", "html", "br"])
#: HTML's whitespace (not Unicode's: a no-break space is text and ends the head).
_HTML_SPACE = " \t\n\f\r"


@dataclass
class _HtmlText(HTMLParser):
    parts: list[str] = field(default_factory=list)
    length: int = 0
    blocks: list[Block] = field(default_factory=list)
    block_start: int = 0
    #: Index in `parts` where the current block starts: a block boundary reads only the block's own parts
    #: (joining every part at every boundary made a page of <p> elements quadratic).
    block_part: int = 0
    kind: str = "text"
    skipping: int = 0
    #: Before the body: an implicit or explicit head, whose text is not shown (HTML5 "before/in head" modes).
    in_head: bool = True
    in_title: bool = False
    title_parts: list[str] = field(default_factory=list)
    title_length: int = 0
    pre: int = 0

    def __post_init__(self) -> None:
        super().__init__(convert_charrefs=True)

    def _emit(self, data: str) -> None:
        self.parts.append(data)
        self.length += len(data)

    def _break(self, kind: str = "text") -> None:
        text = "".join(self.parts[self.block_part :])
        block = _trimmed(text, 0, len(text), self.kind)
        if block:
            self.blocks.append(
                Block(self.block_start + block.start, self.block_start + block.end, block.kind)
            )
            self._emit("\n")
        self.block_start = self.length
        self.block_part = len(self.parts)
        self.kind = kind

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _HEAD_TAGS:
            self.in_head = False
        if tag == "title":
            self.in_title = True
        if tag in _SKIPPED:
            self.skipping += 1
        elif tag in _BLOCK_TAGS:
            self._break("heading" if tag in _HEADINGS else "code" if tag == "pre" else "text")
            self.pre += tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if tag in _HEAD_ENDING_END_TAGS:
            self.in_head = False
        if tag == "title":
            self.in_title = False
        if tag in _SKIPPED:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _BLOCK_TAGS:
            self._break()
            self.pre -= tag == "pre" and self.pre > 0

    def handle_data(self, data: str) -> None:
        if self.in_title and self.title_length < MAX_TITLE_CHARS:
            self.title_parts.append(data)
            self.title_length += len(data)
        if self.skipping:
            return
        if self.in_head:
            if self.in_title or not data.strip(_HTML_SPACE):
                return
            self.in_head = False  # text cannot be in the head: the body has begun
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
            if self.length == self.block_start or (self.parts and self.parts[-1].endswith((" ", "\n"))):
                data = data.lstrip()
        self._emit(data)

    def parse_html_declaration(self, i: int) -> int:
        # In HTML content `<![...` is a bogus comment ending at the next `>` (HTML5). The base class parses
        # it as an SGML marked section and raises AssertionError on an unknown keyword (`<![foo[`).
        if self.rawdata.startswith("<![", i):
            return self.parse_bogus_comment(i)
        return super().parse_html_declaration(i)

    def finish(self) -> None:
        """The end of the input, instead of `close()`. After `feed` the parser holds back only what could
        not be completed: a construct with no end in the rest of the input (a comment without `-->`, a tag
        without `>`) and everything after it, or trailing text. CPython 3.11's `close()` re-scans such a
        construct for every `<` after it (quadratic); HTML5 (and CPython from 3.13.4) closes the comment or
        drops the tag at the end of the file, so nothing visible remains of it. Only text is kept (a last
        lone `<` is text too)."""
        rest, self.rawdata = self.rawdata, ""
        if rest and (rest == "<" or not rest.startswith("<")) and not self.cdata_elem:
            self.handle_data(unescape(rest))
        self._break()

    @property
    def title(self) -> str:
        return re.sub(r"\s+", " ", "".join(self.title_parts)).strip()[:MAX_TITLE_CHARS]


def _html(source: str) -> Extracted:
    parser = _HtmlText()
    # HTML5 reads every line ending as LF before parsing; the extracted text is no copy of the source anyway.
    parser.feed(source.replace("\r\n", "\n").replace("\r", "\n"))
    parser.finish()
    return Extracted("".join(parser.parts), parser.blocks, parser.title)
