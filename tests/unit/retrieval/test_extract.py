"""Text extraction: plain text, Markdown and HTML into text and structural blocks; rejections."""

from __future__ import annotations

import pytest

from services.retrieval.extract import ExtractionError, extract


def _blocks(content: bytes, mime: str) -> list[tuple[str, str]]:
    extracted = extract(content, mime)
    return [(b.kind, extracted.text[b.start : b.end]) for b in extracted.blocks]


def test_plain_text_paragraphs() -> None:
    assert _blocks(b"One line.\r\nSame para.\r\n\r\n  \nSecond.\n", "text/plain") == [
        ("text", "One line.\nSame para."),
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
