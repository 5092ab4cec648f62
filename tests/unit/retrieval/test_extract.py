"""Text extraction: plain text, Markdown and HTML into text and structural blocks; rejections."""

from __future__ import annotations

import pytest

from services.retrieval import extract as extract_module
from services.retrieval.extract import MAX_TITLE_CHARS, Block, ExtractionError, extract
from services.retrieval.ingest import IngestOptions


def _blocks(content: bytes, mime: str) -> list[tuple[str, str]]:
    extracted = extract(content, mime)
    return [(b.kind, extracted.text[b.start : b.end]) for b in extracted.blocks]


def test_plain_text_paragraphs() -> None:
    assert _blocks(b"One line.\r\nSame para.\r\n\r\n  \nSecond.\n", "text/plain") == [
        ("text", "One line.\r\nSame para."),  # line endings as sent (test_chunking: offsets)
        ("text", "Second."),
    ]


def test_markdown_headings_lists_and_code() -> None:
    source = b"# Guide\n\nIntro text.\n\n## Install\n- step one\n- step two\n\n```sh\npip install x\n\n```\n"
    extracted = extract(source, "text/markdown; charset=utf-8")
    assert extracted.title == "Guide"
    assert _blocks(source, "text/markdown") == [
        ("heading", "# Guide"),
        ("text", "Intro text."),
        ("heading", "## Install"),
        ("text", "- step one"),
        ("text", "- step two"),
        ("code", "```sh\npip install x\n\n```"),
    ]


def test_html_visible_text_only() -> None:
    source = (
        b"<html><head><title>Pay &amp; Leave</title><style>p{color:red}</style></head><body>"
        b"<h2>Policy</h2><p>Leave is <b>25</b>&nbsp;days.</p><script>track()</script>"
        b"<ul><li>one</li><li>two</li></ul></body></html>"
    )
    extracted = extract(source, "text/html")
    assert extracted.title == "Pay & Leave"
    assert "track" not in extracted.text and "color" not in extracted.text
    assert _blocks(source, "text/html") == [
        ("heading", "Policy"),
        ("text", "Leave is 25 days."),
        ("text", "one"),
        ("text", "two"),
    ]


@pytest.mark.parametrize(
    ("content", "mime", "reason"),
    [
        (b"", "text/plain", "DOCUMENT_EMPTY"),
        (b"   \n\n  ", "text/plain", "DOCUMENT_EMPTY"),
        (b"<html><script>x()</script></html>", "text/html", "DOCUMENT_EMPTY"),
        (b"\xff\xfe\x00bad", "text/plain", "DOCUMENT_UNDECODABLE"),
        (b"abc\x00def", "text/plain", "DOCUMENT_UNDECODABLE"),
        (b"%PDF-1.7", "application/pdf", "MIME_TYPE_UNSUPPORTED"),
        (b"text", "", "MIME_TYPE_UNSUPPORTED"),
    ],
)
def test_unusable_input_is_rejected_with_a_reason(content: bytes, mime: str, reason: str) -> None:
    with pytest.raises(ExtractionError) as raised:
        extract(content, mime)
    assert raised.value.reason == reason


#: Texts with nothing to see: no letter, number, punctuation or symbol (docs/retrieval.md, "no visible text").
INVISIBLE = {
    "zero-width-space": "\u200b \u200b\n\n\u200b",
    "zero-width-joiners": "\u200d\u200c\u200d",
    "byte-order-marks": "\ufeff\ufeff\ufeff",  # the first is the encoding's signature, the others stay
    "word-joiner-and-soft-hyphen": "\u2060\u00ad\u180e",
    "combining-marks-alone": "\u0301\u0308 \u0327\n\u20dd",
    "control-characters": "\x01\x02\x1b\x08\x7f\x85\x9f",
    "separators": "\u2028\u2029\u3000\u00a0\u2007",
    "bidi-marks-and-variation-selectors": "\u200e\u200f\u202e\ufe0f\U000e0001",
}


@pytest.mark.parametrize("text", list(INVISIBLE.values()), ids=list(INVISIBLE))
@pytest.mark.parametrize("mime", ["text/plain", "text/markdown", "text/html"])
def test_a_document_with_no_visible_text_is_empty(text: str, mime: str) -> None:
    """Until 2026-12-06 only whitespace counted as nothing: these were stored as one chunk of no word pieces,
    whose vector means nothing and which matched every query about as well as any other."""
    content = f"<p>{text}</p><p>{text}</p>" if mime == "text/html" else text
    with pytest.raises(ExtractionError) as raised:
        extract(content.encode(), mime)
    assert raised.value.reason == "DOCUMENT_EMPTY"


def test_html_character_references_to_invisible_characters_are_empty() -> None:
    with pytest.raises(ExtractionError) as raised:
        extract(b"<body><p>&#8203;&zwj;&#xFEFF;</p><div>&shy;&#x301;</div></body>", "text/html")
    assert raised.value.reason == "DOCUMENT_EMPTY"


@pytest.mark.parametrize(
    "text",
    ["e\u0301", "\U0001f44d", "\u200ba\u200b", "\u00a0\u2014", "\ue000", "\u0661", "\u200d$"],
    ids=[
        "accented-letter",
        "emoji",
        "letter-between-zero-width",
        "dash",
        "private-use-glyph",
        "digit",
        "symbol",
    ],
)
def test_one_visible_character_is_text(text: str) -> None:
    extracted = extract(text.encode(), "text/plain")
    assert [extracted.text[b.start : b.end] for b in extracted.blocks] == [text.strip()]


PAGE = b"""<!DOCTYPE html><html><head><title>
  Leave   policy
</title><meta charset="utf-8"></head>
<body><nav><a href="/">Home</a> | <a href="/hr">HR</a></nav>
<main><h1>Annual   leave</h1>
<div><p>Full-time staff get <b>25</b>&nbsp;days.<br>Part-time staff: pro rata.</p>
<ul><li>Carry over up to <i>5</i> days</li><li>Ask&nbsp;your manager &amp; HR</li></ul></div>
<pre>  code   line 1
  line 2</pre><table><tr><td>A</td><td>B &lt;C&gt;</td></tr></table>
<p>1 &lt; 2 and 3 > 2</p><!-- hidden --><noscript>no js</noscript></main></body></html>"""


def test_an_ordinary_page_extracts_as_it_always_did() -> None:
    # Pinned from the extractor before block boundaries became linear: same text, blocks and title.
    extracted = extract(PAGE, "text/html")
    assert extracted.title == "Leave policy"
    assert _blocks(PAGE, "text/html") == [
        ("text", "Home | HR"),
        ("heading", "Annual leave"),
        ("text", "Full-time staff get 25 days."),
        ("text", "Part-time staff: pro rata."),
        ("text", "Carry over up to 5 days"),
        ("text", "Ask your manager & HR"),
        ("code", "code   line 1\n  line 2"),
        ("text", "A"),
        ("text", "B <C>"),
        ("text", "1 < 2 and 3 > 2"),
    ]
    assert extracted.text.endswith("1 < 2 and 3 > 2\n")


def test_html_block_boundaries_read_only_their_own_block(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each block boundary used to join the whole text emitted so far: n blocks cost n² characters.
    # Counted, not timed: the text handed to `_trimmed` over a document must grow with the document.
    read = 0
    original = extract_module._trimmed

    def counting(text: str, start: int, end: int, kind: str) -> Block | None:
        nonlocal read
        read += len(text)
        return original(text, start, end, kind)

    monkeypatch.setattr(extract_module, "_trimmed", counting)
    source = b"<p>x</p>" * 5_000
    extracted = extract(source, "text/html")
    assert len(extracted.blocks) == 5_000
    assert read <= 2 * len(extracted.text)


def test_a_largest_allowed_html_document_of_block_tags_extracts() -> None:
    # 3 MiB of <p> elements took about 40 minutes when extraction was quadratic; the test's own timeout
    # (pytest `timeout`) is the bound here, never a wall-time assertion. bench: ~4 s on this machine.
    size = IngestOptions().max_document_bytes
    source = b"<div><p>x</p><br></div>" * (size // 23)
    extracted = extract(source, "text/html")
    assert len(extracted.blocks) == size // 23
    assert extracted.text == "x\n" * (size // 23)


def test_a_long_markdown_line_is_read_once() -> None:
    # `^(#{1,6})[ \t]+(.+?)[ \t#]*$` backtracked over the rest of the line at every character.
    line = b"# a" + b" " * (3 * 1024 * 1024) + b"b"
    extracted = extract(line, "text/markdown")
    assert extracted.title == "a" + " " * (MAX_TITLE_CHARS - 1)
    assert [b.kind for b in extracted.blocks] == ["heading"]


@pytest.mark.parametrize(
    ("line", "title"),
    [("## Install ##", "Install"), ("# C#", "C"), ("#\tTabbed  title", "Tabbed  title"), ("# a # # ", "a")],
)
def test_markdown_heading_titles(line: str, title: str) -> None:
    assert extract(f"{line}\n\nBody.".encode(), "text/markdown").title == title


@pytest.mark.parametrize(
    ("source", "texts"),
    [
        # HTML5 ends an unterminated construct at the end of the file: a comment swallows the rest...
        (b"<p>Visible</p><!-- never closed <p>hidden</p>", ["Visible"]),
        # ...and a tag without its `>` is dropped, however many `<` follow it.
        (b"<p>a <b then" + b" <c" * 10_000, ["a"]),
        (b"<p>ends with a lone <", ["ends with a lone <"]),
        (b"<p>cut entity &am", ["cut entity &am"]),
        # `<![` in HTML is a bogus comment up to `>`, not an SGML marked section (that raised AssertionError).
        (b"<p>a</p><![foo[ x ]]><p>b</p>", ["a", "b"]),
        (b"<p>a</p><![ x", ["a"]),
    ],
)
def test_html_that_never_ends_its_markup(source: bytes, texts: list[str]) -> None:
    assert [text for _, text in _blocks(source, "text/html")] == texts


def test_an_unclosed_title_is_cut() -> None:
    extracted = extract(b"<title>" + b"<i>word</i> " * 100_000, "text/html")
    assert len(extracted.title) == MAX_TITLE_CHARS
    assert extracted.title.startswith("word word")


@pytest.mark.parametrize(
    ("source", "texts"),
    [
        # `</head>` is optional in HTML: the head ends at the first tag that cannot be in it (here <body>).
        (
            b"<html><head><title>Leave</title><meta charset=utf-8><body><p>Staff get 25 days.</p>",
            ["Staff get 25 days."],
        ),
        (
            b"<head><title>Leave</title><link rel=icon href=x.ico><p>Staff get 25 days.",
            ["Staff get 25 days."],
        ),
        # ...or at text: it cannot be in the head either.
        (b"<html><head><title>Leave</title>Staff get 25 days.", ["Staff get 25 days."]),
        # The head may be implicit too; its title is no body text.
        (b"<title>Leave</title><style>p{}</style><p>Staff get 25 days.</p>", ["Staff get 25 days."]),
        # A <head> tag in the body is ignored (HTML5), not the start of hidden text.
        (b"<head><title>Leave</title></head><body><head><p>Staff get 25 days.</p>", ["Staff get 25 days."]),
    ],
)
def test_the_head_ends_where_html_ends_it(source: bytes, texts: list[str]) -> None:
    """Until 2026-12-06 everything after <head> was hidden up to `</head>`: a page that omits it (valid HTML)
    lost its whole body and was refused as DOCUMENT_EMPTY."""
    extracted = extract(source, "text/html")
    assert [text for _, text in _blocks(source, "text/html")] == texts
    assert extracted.title == "Leave"
