# ruff: noqa: RUF001 - full-width and typographic forms of values are what some tests are about
"""Streamed screening: values split over chunks are caught, masks restored across boundaries, work is linear."""

from __future__ import annotations

import base64
import random

import pytest

from parapet.moderation.v1 import category_pb2 as C
from parapet.moderation.v1 import finding_pb2
from services.moderation.masking import MaskingVault
from services.moderation.policy import DEFAULT_POLICY, Policy
from services.moderation.screener import Screener
from services.moderation.stream import LEFT_CONTEXT, StreamScreener, tail_start
from tests.unit.moderation.moderation_support import JWT, PRIVATE_KEY, WITHOUT_SPACES, random_chunkings, run


@pytest.mark.parametrize(
    "chunks, secret",
    [
        (["Mail jo", "hn.doe@exa", "mple.com today"], "john.doe@example.com"),
        (["card 4111 11", "11 1111 ", "1111 thanks"], "4111 1111 1111 1111"),
        (["IBAN DE89 3704 ", "0044 0532 01", "30 00, ok"], "DE89 3704 0044 0532 0130 00"),
    ],
)
def test_value_split_over_three_chunks_is_caught(screener: Screener, chunks: list[str], secret: str) -> None:
    stream, released = run(screener, chunks)
    text = "".join(released)
    assert secret not in text and "[REDACTED:" in text
    # No released piece carries a fragment that completes the value with its neighbours.
    assert all(secret[:6] not in piece for piece in released)
    (applied,) = stream.applied
    assert "".join(chunks)[applied.detection.start : applied.detection.end] == secret


def test_masks_restored_across_chunk_boundaries(screener: Screener) -> None:
    vault = MaskingVault()
    vault.mask(C.CATEGORY_PII_EMAIL, "ada@example.org")
    vault.mask(C.CATEGORY_PII_PERSON_NAME, "Ada Lovelace")
    stream, released = run(
        screener, ["Dear <PER", "SON_1>, we wrote to <", "EMAIL", "_1", "> yesterday."], vault
    )
    assert "".join(released) == "Dear Ada Lovelace, we wrote to ada@example.org yesterday."
    assert all("<" not in piece for piece in released)  # a placeholder is never released half-restored
    assert stream.decision() == finding_pb2.DECISION_PASS


def test_blocked_stream_releases_nothing_after_the_block(screener: Screener) -> None:
    stream, released = run(screener, ["All good so far. ", "The code is CANA", "RY-42 and more ", "text after"],
                           protected=("CANARY-42",))  # fmt: skip
    assert stream.blocked and stream.decision() == finding_pb2.DECISION_BLOCK
    text = "".join(released)
    assert "CANA" not in text and "after" not in text
    assert stream.feed("more").released == ""
    assert [a.detection.category for a in stream.applied] == [C.CATEGORY_SYSTEM_PROMPT_LEAK]
    whole = "All good so far. The code is CANARY-42 and more "
    (leak,) = stream.applied
    assert whole[leak.detection.start : leak.detection.end] == "CANARY-42"  # offsets from the stream start


def test_private_key_split_over_many_chunks_is_redacted_whole(screener: Screener) -> None:
    key = "-----BEGIN RSA PRIVATE KEY-----\n" + "MIIEpAIBAAKCAQEA7x" * 20 + "\n-----END RSA PRIVATE KEY-----"
    answer = f"Here it is:\n{key}\nKeep it safe."
    _, released = run(screener, [answer[i : i + 7] for i in range(0, len(answer), 7)])
    assert "".join(released) == "Here it is:\n[REDACTED:PRIVATE_KEY]\nKeep it safe."


def test_stream_equals_whole_text_screening_for_any_chunking(screener: Screener) -> None:
    answer = (
        "Thanks! Reach Jane at jane.roe@mail.example.net or +44 20 7946 0958. Her card 5555 5555 5555 4444 "
        "and IBAN GB82 WEST 1234 5698 7654 32 are on file; server 192.168.10.77 logs in with "
        "postgres://svc:Pa55w0rd!@db.example:5432/app. Set api_key = 'Zk3v9QmX2pL7wR4tY8nB' and AWS secret: "
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY1 next to AKIAIOSFODNN7EXAMPLE at Piroska u. 97, Budapest. "
        * 3
    )
    whole = screener.screen_output(answer, DEFAULT_POLICY, ()).text
    for chunks in random_chunkings(answer, 7, 20):
        _, released = run(screener, chunks)
        assert "".join(released) == whole


def test_total_work_is_linear_in_the_answer(screener: Screener) -> None:
    sentence = "The quarterly report shows steady growth across all regions, and call +1 415 555 0134. "

    def scanned(repeats: int) -> tuple[int, int, int]:
        answer = sentence * repeats
        chunks = [answer[i : i + 16] for i in range(0, len(answer), 16)]
        stream, _ = run(screener, chunks)
        return stream.scanned_chars, stream.received_chars, len(chunks)

    small, large = scanned(50), scanned(200)
    # Four times the answer costs four times the work (a rescan per chunk would cost sixteen times)...
    assert large[0] / small[0] < 4.2
    # ...and each chunk rescans at most the held-back window plus the left context.
    for total, received, chunks in (small, large):
        assert total <= received + chunks * (LEFT_CONTEXT + 200)


def test_hold_back_is_the_unfinished_tail_only(screener: Screener) -> None:
    stream = StreamScreener(screener.output_detectors(DEFAULT_POLICY, ()), DEFAULT_POLICY, MaskingVault())
    stream.feed("word " * 200)
    assert stream.held_chars <= 24 * 5  # the last pieces a street address could still span, not the answer
    # A token that cannot end yet (an e-mail in progress) is held whole.
    assert tail_start("see bob@exa", 11, 254, 1) == 4
    assert tail_start("see bob@exa ", 12, 254, 1) == 12


def test_stream_equals_whole_text_screening_over_the_development_pii_set(screener: Screener) -> None:
    """The anchored hold-back (addresses, phone numbers, IBANs...) loses nothing: every sentence of the
    development PII set, cut at random places, screens exactly as it does whole."""
    import json
    from pathlib import Path

    dataset = (
        Path(__file__).resolve().parents[3].parent / "shared/data/moderation/pii_presidio_synth_dev.json"
    )
    sentences = [s["full_text"] for s in json.loads(dataset.read_text())]
    assert len(sentences) == 750
    for seed, text in enumerate(sentences):
        whole = screener.screen_output(text, DEFAULT_POLICY, ()).text
        for chunks in random_chunkings(text, seed, 3, most_cuts=40):
            _, released = run(screener, chunks)
            assert "".join(released) == whole, (text, chunks)


def test_prose_is_released_a_few_words_behind_not_an_address_span_behind(screener: Screener) -> None:
    answer = "You said: How many vacation days do new employees receive in their first year according to the "
    stream = StreamScreener(screener.output_detectors(DEFAULT_POLICY, ()), DEFAULT_POLICY, MaskingVault())
    released = "".join(stream.feed(word + " ").released for word in answer.split())
    # Lower-case prose without a number or street word in sight: nothing waits.
    assert released == answer and stream.held_chars == 0
    # Capitalised words could lead up to a street word still to come ("Baker Street"): they wait.
    stream.feed("office of Baker ")
    assert stream.held_chars == len("Baker ")
    # A house number holds from itself (and capitalised words before it), as the address could start there.
    stream.feed("at 221 Baker ")
    assert stream.held_chars == len("Baker at 221 Baker ") - len("Baker at ")


def test_private_key_is_held_whole_when_a_chunk_ends_on_a_line_break(screener: Screener) -> None:
    """A key whose lines end its chunks, with no digit near a chunk's end for a phone number to hold on to:
    the open block reached the end of the held tail, counted as final there and its body went out."""
    body = "\n".join(["abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijkl"] * 8)
    answer = f"Here it is:\n-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\nDone."
    stream, released = run(screener, answer.splitlines(keepends=True))
    assert "".join(released) == "Here it is:\n[REDACTED:PRIVATE_KEY]\nDone."
    assert [a.detection.category for a in stream.applied] == [C.CATEGORY_SECRET_PRIVATE_KEY]


def test_total_work_is_linear_for_an_answer_without_whitespace(screener: Screener) -> None:
    """A long token (a base64 blob, a data URI) is held back as far as a JWT could reach (10,000 code
    points); rescanning that tail with every small chunk made a 40,000-character blob cost 28 s of CPU."""
    blob = base64.b64encode(random.Random(3).randbytes(30_000)).decode()
    answer = f"The file: {blob} is attached."
    chunks = [answer[i : i + 4] for i in range(0, len(answer), 4)]
    stream, released = run(screener, chunks)
    assert "".join(released) == screener.screen_output(answer, DEFAULT_POLICY, ()).text
    assert stream.scanned_chars <= 3 * stream.received_chars + len(chunks) * (LEFT_CONTEXT + 512)


@pytest.mark.parametrize(
    "answer, protected, policy",
    [
        # A system prompt spelled out with wide gaps: six words, far more than six words' worth of code points.
        ("Sure: " + "you are acme's helpful support bot, never reveal discounts".replace(" ", " " * 100),
         ("You are Acme's helpful support bot, never reveal discounts to anyone.",), DEFAULT_POLICY),
        ("Let me tell you about competitor" + " " * 400 + "pricing today.", (),
         Policy(blocked_topics=("competitor pricing",))),
        # One piece is held whole only up to the longest single-piece match (a JWT's 10,000 code points).
        ("Ask about Pro" + "\u200b" * 30_000 + "jectX now.", (), Policy(blocked_terms=("projectx",))),
    ],
)  # fmt: skip
def test_padding_between_words_does_not_stretch_a_match_past_the_hold_back(
    screener: Screener, answer: str, protected: tuple[str, ...], policy: Policy
) -> None:
    """Leaks, topics and terms are bounded in words, not code points: whitespace or invisible characters
    between the words made a match longer than the hold-back, so the stream released what the whole
    text blocks."""
    assert screener.screen_output(answer, policy, protected).decision == finding_pb2.DECISION_BLOCK
    stream, released = run(screener, [answer[i : i + 64] for i in range(0, len(answer), 64)], protected=protected,
                           policy=policy)  # fmt: skip
    assert stream.decision() == finding_pb2.DECISION_BLOCK
    assert "discounts" not in "".join(released) and "pricing" not in "".join(released)
    assert "jectX" not in "".join(released)


def test_an_empty_chunk_costs_no_scan(screener: Screener) -> None:
    """Empty chunks do not count against the text limit, and each rescanned the held tail (about 200 µs):
    a stream of them was unbounded work. One changes nothing, so it is answered without a scan; what is
    released is that of the same stream without it."""
    chunks = ["Please call me at +1 (415) 555-01", "", "", "34 tomorrow.", ""]
    stream, released = run(screener, chunks)
    without, expected = run(screener, [c for c in chunks if c])
    assert stream.scanned_chars == without.scanned_chars
    assert "".join(released) == "".join(expected)
    assert [r for r, c in zip(released, chunks, strict=False) if not c] == ["", "", ""]


def test_a_full_width_iban_is_redacted_in_any_chunking(screener: Screener) -> None:
    """Full-width letters and digits (a CJK input method's) are found by the pattern detectors as typed in
    ASCII, and a stream holds such a value back like its ASCII form, wherever the chunks are cut."""
    answer = "Überweisen Sie an ＤＥ８９ ３７０４ ００４４ ０５３２ ０１３０ ００ bis Freitag, danke."
    whole = screener.screen_output(answer, DEFAULT_POLICY, []).text
    assert whole == "Überweisen Sie an [REDACTED:IBAN] bis Freitag, danke."
    for chunks in random_chunkings(answer, 7, 50, most_cuts=6):
        assert "".join(run(screener, chunks)[1]) == whole, chunks


_JAPANESE = (
    "ご依頼の件、確認しました。担当者の連絡先はjohn@example.comで、電話は090-1234-5678です。"
    "お支払いはカード4111 1111 1111 1111で完了しました。サーバー2001:db8::8a2e:370:7334に接続し、"
    "住所は1600 Pennsylvania Avenueです。パスワードはpassword=Hunter2Secretです。鍵はAKIAIOSFODNN7EXAMPLEで、"
    "何かあればいつでもご連絡ください。よろしくお願いいたします。"
)


def test_values_in_japanese_text_are_redacted_in_any_chunking(screener: Screener) -> None:
    whole = screener.screen_output(_JAPANESE, DEFAULT_POLICY, ()).text
    assert whole == (
        "ご依頼の件、確認しました。担当者の連絡先は[REDACTED:EMAIL]で、電話は[REDACTED:PHONE]です。"
        "お支払いはカード[REDACTED:CREDIT_CARD]で完了しました。サーバー[REDACTED:IP_ADDRESS]に接続し、"
        "住所は[REDACTED:ADDRESS]です。パスワードはpassword=[REDACTED:PASSWORD]です。鍵は[REDACTED:API_KEY]で、"
        "何かあればいつでもご連絡ください。よろしくお願いいたします。"
    )
    for chunks in random_chunkings(_JAPANESE, 5, 50, most_cuts=80):
        assert "".join(run(screener, chunks)[1]) == whole, chunks


@pytest.mark.parametrize(
    "answer",
    [
        "東京の天気は晴れです。明日は雨が降るでしょう。傘を持って出かけてください。" * 4,
        "北京今天天气晴朗，明天可能会下雨，出门请带伞。我们下周再联系，祝您一切顺利。" * 4,
        "วันนี้อากาศดีมากครับพรุ่งนี้อาจจะมีฝนตกกรุณาพกร่มไปด้วยนะครับขอบคุณมากครับ" * 4,
    ],
)
def test_prose_of_a_script_without_spaces_is_released_as_it_comes(screener: Screener, answer: str) -> None:
    """The hold-back counts whitespace-separated pieces, and Chinese, Japanese or Thai prose is one piece:
    a whole answer was held until its end (or up to a JWT's 10,000 code points). No pattern detector's value
    holds a letter of such a script, so only what follows the last one can still be a value in progress."""
    stream = StreamScreener(screener.output_detectors(DEFAULT_POLICY, ()), DEFAULT_POLICY, MaskingVault())
    released = "".join(stream.feed(answer[i : i + 4]).released for i in range(0, len(answer), 4))
    # Held: what a phone number's context words after it could still change (24 code points), no more.
    assert stream.held_chars <= 24
    assert released + stream.finish().released == answer


# (what the value needs before it, the value, what replaces it in an answer)
_VALUES = [
    ("", "john@example.com", "[REDACTED:EMAIL]"),
    ("", "+81 90-1234-5678", "[REDACTED:PHONE]"),
    ("", "4111 1111 1111 1111", "[REDACTED:CREDIT_CARD]"),
    ("", "DE89370400440532013000", "[REDACTED:IBAN]"),
    ("", "536-22-8841", "[REDACTED:US_SSN]"),
    ("", "192.168.10.77", "[REDACTED:IP_ADDRESS]"),
    ("", "2001:db8::8a2e:370:7334", "[REDACTED:IP_ADDRESS]"),
    ("", "1600 Pennsylvania Avenue", "[REDACTED:ADDRESS]"),
    ("", "AKIAIOSFODNN7EXAMPLE", "[REDACTED:API_KEY]"),
    ("", JWT, "[REDACTED:JWT]"),
    ("password=", "Hunter2Secret", "[REDACTED:PASSWORD]"),
    ("", PRIVATE_KEY, "[REDACTED:PRIVATE_KEY]"),
]  # fmt: skip


@pytest.mark.parametrize("script", list(WITHOUT_SPACES))
def test_every_kind_of_value_next_to_a_script_without_spaces_is_redacted_in_any_chunking(
    screener: Screener, script: str
) -> None:
    before, after = WITHOUT_SPACES[script]
    answer = "".join(before + lead + value + after for lead, value, _ in _VALUES)
    expected = "".join(before + lead + replacement + after for lead, _, replacement in _VALUES)
    assert screener.screen_output(answer, DEFAULT_POLICY, ()).text == expected
    for chunks in random_chunkings(answer, 13, 30):
        assert "".join(run(screener, chunks)[1]) == expected, chunks


def _chunkings(answer: str, seed: int, times: int) -> list[list[str]]:
    """The answer whole, cut at each code point in turn (two chunks), and cut at random places."""
    return [
        [answer],
        *([answer[:i], answer[i:]] for i in range(1, len(answer))),
        *random_chunkings(answer, seed, times),
    ]


@pytest.mark.parametrize(
    "user", ["用" * 64, "م" * 64, "ユーザー" * 16, "admin"], ids=["han", "arabic", "katakana", "ascii"]
)
def test_a_url_password_after_a_user_name_of_another_script_is_redacted_in_any_chunking(
    screener: Screener, user: str
) -> None:
    """The scheme that makes a URL's password one is up to 90 code points before it. The stream released text
    up to the user name's last Chinese or Arabic letter (no value holds one, it reasoned), kept 64 code points
    of it as left context, and the next scan no longer saw "postgres://": the password went out as written."""
    answer = f"Connect with postgres://{user}:Hunt#r2x@db.example.com and nothing else."
    whole = screener.screen_output(answer, DEFAULT_POLICY, ()).text
    assert "[REDACTED:PASSWORD]" in whole and "Hunt" not in whole
    for chunks in _chunkings(answer, 3, 30):
        assert "".join(run(screener, chunks)[1]) == whole, chunks


@pytest.mark.parametrize(
    "answer",
    [
        "Use postgres://admin:סיסמה" + "9" * 30 + "@db.example.com/app now.",
        "Use postgres://admin:密码" + "x1" * 15 + "@db.example.com/app now.",
        "Your password: مرحبا" + "7" * 30 + " keep it.",
        "パスワードはpassword=密码" + "x1" * 15 + "です。",
    ],
    ids=["url-hebrew", "url-han", "assignment-arabic", "assignment-han"],
)
def test_a_password_holding_letters_of_other_scripts_is_redacted_wherever_the_answer_is_cut(
    screener: Screener, answer: str
) -> None:
    """A password may hold letters of any script, so the last such letter bounds a password in progress only
    when none opened before it is still open: a URL's password is no finding until its "@host" comes, and
    released up to its last Hebrew or Chinese letter, it was out of the stream's reach."""
    whole = screener.screen_output(answer, DEFAULT_POLICY, ()).text
    assert (
        "[REDACTED:PASSWORD]" in whole
        and "99999" not in whole
        and "x1x1" not in whole
        and "7777" not in whole
    )
    for chunks in _chunkings(answer, 5, 20):
        assert "".join(run(screener, chunks)[1]) == whole, chunks


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Meet me at aKossuth utca 5 tomorrow.", "Meet me at a[REDACTED:ADDRESS] tomorrow."),
        ("Then visit cafePiroska u. 97 today.", "Then visit cafe[REDACTED:ADDRESS] today."),
    ],
)
def test_an_address_starting_inside_a_word_is_redacted_in_any_chunking(
    screener: Screener, answer: str, expected: str
) -> None:
    """Whole-text screening finds an address from a capital inside a word; the stream let only pieces starting
    with a capital or a digit lead up to one, so "aKossuth " went out before "utca 5" came, and the address
    after it as written."""
    assert screener.screen_output(answer, DEFAULT_POLICY, ()).text == expected
    for chunks in _chunkings(answer, 23, 20):
        assert "".join(run(screener, chunks)[1]) == expected, chunks


_PASSWORDS_IN_OTHER_SCRIPTS = (
    "Your new password: مرحبا2024 please keep it. 新しいpwd=नमस्ते123です。password=密码abc123を使って、"
    "then password=abc密码123 and password=ქართული1, or postgres://admin:סיסמה99@db.example.com/app. "
    "パスワードはpassword=Hunter2です。以上です。"
)


def test_passwords_with_letters_of_other_scripts_are_redacted_in_any_chunking(screener: Screener) -> None:
    whole = screener.screen_output(_PASSWORDS_IN_OTHER_SCRIPTS, DEFAULT_POLICY, ()).text
    assert whole == (
        "Your new password: [REDACTED:PASSWORD] please keep it. 新しいpwd=[REDACTED:PASSWORD]です。"
        "password=[REDACTED:PASSWORD]を使って、then password=[REDACTED:PASSWORD] and "
        "password=[REDACTED:PASSWORD], or postgres://admin:[REDACTED:PASSWORD][REDACTED:EMAIL]/app. "
        "パスワードはpassword=[REDACTED:PASSWORD]です。以上です。"
    )
    for chunks in random_chunkings(_PASSWORDS_IN_OTHER_SCRIPTS, 17, 200, most_cuts=80):
        assert "".join(run(screener, chunks)[1]) == whole, chunks


@pytest.mark.parametrize(
    "lead",
    [
        "パスワードはpassword=Hunter2Secretです。",  # a password ended by the Japanese text after it
        "詳しくはhttps://example.jp/docs/setupをご覧ください。",  # a URL without credentials
        "接続先はpostgres://admin:Secret99@db.example.comです。",  # one with them, complete
    ],
)
def test_prose_after_a_finished_password_or_url_is_released_as_it_comes(
    screener: Screener, lead: str
) -> None:
    """A password or URL whose match has ended does not hold back the prose of a script without spaces
    after it; only one still open could run on over that prose."""
    answer = lead + "東京の天気は晴れです。明日は雨が降るでしょう。傘を持って出かけてください。" * 8
    stream = StreamScreener(screener.output_detectors(DEFAULT_POLICY, ()), DEFAULT_POLICY, MaskingVault())
    released = "".join(stream.feed(answer[i : i + 4]).released for i in range(0, len(answer), 4))
    assert stream.held_chars <= 24
    assert released + stream.finish().released == screener.screen_output(answer, DEFAULT_POLICY, ()).text


@pytest.mark.parametrize(
    "chunks",
    [
        ["SSN" + "\u200b" * 80 + ": the number you asked me for is ", "234567891. Bye now friend."],
        ["api_key" + "\u200b" * 80 + "= ", "abcd1234efgh5678ijkl9 done"],
        ["Your SSN", "\u200b" * 40, "\u200b" * 40 + ": here it is, as requested, ", "234567891. Bye."],
    ],
)
def test_left_context_holds_what_detectors_read_not_invisible_characters(
    screener: Screener, chunks: list[str]
) -> None:
    """The label before a value is read from the released text the stream keeps. It kept 64 code points as
    written, and 80 zero-width spaces after "SSN" pushed the label out of it while the detectors, which read
    the text without them, found it in the whole answer: the number went out as written."""
    answer = "".join(chunks)
    whole = screener.screen_output(answer, DEFAULT_POLICY, ()).text
    assert "[REDACTED:" in whole
    assert "".join(run(screener, chunks)[1]) == whole


def test_left_context_of_invisible_characters_is_bounded(screener: Screener) -> None:
    """The left context grows until it holds LEFT_CONTEXT code points that the detectors read, but never past four
    times that as written, or words padded with thousands of invisible characters made every chunk rescan
    them."""
    piece = "word" + "\u200b" * 100 + " "
    answer = piece * 60
    chunks = [answer[i : i + len(piece)] for i in range(0, len(answer), len(piece))]
    stream, released = run(screener, chunks)
    assert "".join(released) == answer
    assert stream.scanned_chars <= 2 * stream.received_chars + len(chunks) * 4 * LEFT_CONTEXT
