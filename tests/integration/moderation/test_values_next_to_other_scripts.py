# ruff: noqa: RUF001 - values written in letters of scripts beyond Latin are what some tests are about
"""Values written straight against Chinese, Japanese, Korean or Thai text, over real channels.

Chinese, Japanese and Thai put no space between words, and Korean glues its particles to the word before
("john@example.com으로"), so a value typed in such text touches a letter of that script on one side or both.
Such a letter cannot continue an e-mail address, a number or a key, yet the detectors whose edges were judged
with Python's Unicode word class took it for part of the value: an e-mail address, an IPv6 address or a street
address run into it went to the provider as typed.
"""

from __future__ import annotations

import pytest

from parapet.moderation.v1 import category_pb2 as C
from parapet.moderation.v1 import moderation_service_pb2 as pb
from tests.integration.moderation.conftest import MODULE, Suite, released
from tests.unit.moderation.moderation_support import JWT, PRIVATE_KEY, WITHOUT_SPACES

pytestmark = MODULE

# (category, what the value needs before it, the value, what replaces it)
VALUES = [
    (C.CATEGORY_PII_EMAIL, "", "john@example.com", "<EMAIL_1>"),
    (C.CATEGORY_PII_EMAIL, "", "maria.garcia+news@mail.example.co.uk", "<EMAIL_1>"),
    (C.CATEGORY_PII_PHONE, "", "090-1234-5678", "<PHONE_1>"),
    (C.CATEGORY_PII_PHONE, "", "+81 90-1234-5678", "<PHONE_1>"),
    (C.CATEGORY_PII_CREDIT_CARD, "", "4111 1111 1111 1111", "<CREDIT_CARD_1>"),
    (C.CATEGORY_PII_IBAN, "", "DE89370400440532013000", "<IBAN_1>"),
    (C.CATEGORY_PII_US_SSN, "", "536-22-8841", "<US_SSN_1>"),
    (C.CATEGORY_PII_IP_ADDRESS, "", "192.168.10.77", "<IP_ADDRESS_1>"),
    (C.CATEGORY_PII_IP_ADDRESS, "", "2001:db8::8a2e:370:7334", "<IP_ADDRESS_1>"),
    (C.CATEGORY_PII_STREET_ADDRESS, "", "1600 Pennsylvania Avenue", "<ADDRESS_1>"),
    (C.CATEGORY_PII_STREET_ADDRESS, "", "Pfarrgasse 91", "<ADDRESS_1>"),
    (C.CATEGORY_PII_STREET_ADDRESS, "", "P.O. Box 242", "<ADDRESS_1>"),
    (C.CATEGORY_SECRET_API_KEY, "", "AKIAIOSFODNN7EXAMPLE", "[REDACTED:API_KEY]"),
    (C.CATEGORY_SECRET_API_KEY, "", "sk-proj-Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0Uv", "[REDACTED:API_KEY]"),
    (C.CATEGORY_SECRET_JWT, "", JWT, "[REDACTED:JWT]"),
    (C.CATEGORY_SECRET_PASSWORD, "password=", "Hunter2Secret", "[REDACTED:PASSWORD]"),
    (C.CATEGORY_SECRET_PRIVATE_KEY, "", PRIVATE_KEY, "[REDACTED:PRIVATE_KEY]"),
]  # fmt: skip


def _placements(lead: str, value: str) -> list[tuple[str, str]]:
    """(text before the value, text after it) for every script: on both sides, before only, after only."""
    placements = []
    for before, after in WITHOUT_SPACES.values():
        placements += [(before + lead, after), (before + lead, ""), (lead, after)]
    return placements


@pytest.mark.parametrize(
    "category, lead, value, replacement",
    VALUES,
    ids=[f"{C.Category.Name(v[0])}-{i}" for i, v in enumerate(VALUES)],
)
async def test_screen_input_masks_a_value_run_into_text_without_spaces(
    suite: Suite, category: int, lead: str, value: str, replacement: str
) -> None:
    placements = _placements(lead, value)
    texts = [before + value + after for before, after in placements]
    screened = await suite.stub.ScreenInput(pb.ScreenInputRequest(texts=texts), metadata=suite.metadata())
    assert list(screened.sanitized_texts) == [before + replacement + after for before, after in placements]
    # One finding per text, spanning the value and not a letter of the text around it.
    assert [(f.text_index, f.category, f.start_offset, f.end_offset) for f in screened.findings] == [
        (index, category, len(before), len(before) + len(value))
        for index, (before, _) in enumerate(placements)
    ]
    if replacement.startswith("<"):  # masked: restoring gives back every text as the caller typed it
        for index, text in enumerate(texts):
            unmasked = await suite.stub.Unmask(
                pb.UnmaskRequest(
                    text=screened.sanitized_texts[index], masking_context=screened.masking_context
                ),
                metadata=suite.metadata(),
            )
            assert unmasked.text == text


async def test_an_address_with_letters_beyond_ascii_in_its_local_part_is_masked_whole(suite: Suite) -> None:
    """RFC 6531 lets the local part (and, as IDNA, the domain) hold any letter. Before, "müller@example.de"
    was not found at all, since the check for a word character before the address rejected every start after
    "m"; an address in Greek or Cyrillic letters neither."""
    texts = [
        "Bitte an müller@example.de schreiben.",
        "Écrivez à élodie.française@exemple.fr demain.",
        "Пишите на иван.петров@пример.рф сегодня.",
        "メールはjürgen@bücher.deまで",
    ]
    values = ["müller@example.de", "élodie.française@exemple.fr", "иван.петров@пример.рф", "jürgen@bücher.de"]
    screened = await suite.stub.ScreenInput(pb.ScreenInputRequest(texts=texts), metadata=suite.metadata())
    # (The English name model also calls "Écrivez" a person: not what this test is about.)
    found = [
        (f.text_index, texts[f.text_index][f.start_offset : f.end_offset])
        for f in screened.findings
        if f.category == C.CATEGORY_PII_EMAIL
    ]
    assert found == list(enumerate(values))


async def test_digits_and_addresses_inside_ascii_words_are_still_no_values(suite: Suite) -> None:
    """The edges still reject what the boundary checks were written for: a digit run inside an ASCII
    identifier is no card or phone number, whatever script stands around the identifier."""
    texts = [
        "注文番号order12345678901234です",
        "コードABC4111111111111111XYZを入力",
        "ABC4111111111111111XYZ",
        "ref#x4111111111111111 and id 2001:db8::1x",
    ]
    screened = await suite.stub.ScreenInput(pb.ScreenInputRequest(texts=texts), metadata=suite.metadata())
    assert list(screened.findings) == []
    assert list(screened.sanitized_texts) == texts


_ANSWER = (
    "ご依頼の件、確認しました。担当者の連絡先はjohn@example.comで、電話は090-1234-5678です。"
    "お支払いはカード4111 1111 1111 1111で完了しました。サーバー2001:db8::8a2e:370:7334に接続し、"
    "住所は1600 Pennsylvania Avenueです。何かあればいつでもご連絡ください。よろしくお願いいたします。"
)
_REDACTED = (
    "ご依頼の件、確認しました。担当者の連絡先は[REDACTED:EMAIL]で、電話は[REDACTED:PHONE]です。"
    "お支払いはカード[REDACTED:CREDIT_CARD]で完了しました。サーバー[REDACTED:IP_ADDRESS]に接続し、"
    "住所は[REDACTED:ADDRESS]です。何かあればいつでもご連絡ください。よろしくお願いいたします。"
)


async def test_stream_redacts_values_in_japanese_text_and_releases_the_prose_as_it_comes(
    suite: Suite,
) -> None:
    """Each value is redacted; and the prose is released as it comes, not held until the answer ends: the
    stream held back its last whitespace-separated pieces, and an answer in a script written without spaces was
    one piece, so all of it waited for the end. (Other chunkings: the unit tests of the stream.)"""
    size = 7
    chunks = [_ANSWER[i : i + size] for i in range(0, len(_ANSWER), size)]
    responses = await suite.screen_stream(chunks)
    assert released(responses) == _REDACTED
    safe_chunks = [r.safe_chunk for r in responses if r.WhichOneof("kind") == "safe_chunk"]
    findings = [r.finding for r in responses if r.WhichOneof("kind") == "finding"]
    assert [_ANSWER[f.start_offset : f.end_offset] for f in findings] == [
        "john@example.com",
        "090-1234-5678",
        "4111 1111 1111 1111",
        "2001:db8::8a2e:370:7334",
        "1600 Pennsylvania Avenue",
    ]
    # One safe_chunk per chunk, then the rest after the end: by the last chunk only the tail a phone number's
    # trailing context words could still change is held back, not the answer.
    before_end = "".join(safe_chunks[: len(chunks)])
    assert _REDACTED.startswith(before_end)
    assert len(_REDACTED) - len(before_end) <= 24 + size


# (text, the password in it): found and redacted before 2026-12-06, then not found at all, since every letter
# outside Latin, Greek, Cyrillic and Armenian ended a password; text after a password in a script without spaces
# still ends it once it holds its four characters.
_PASSWORDS = [
    ("password: مرحبا2024", "مرحبا2024"),
    ("pwd=नमस्ते123", "नमस्ते123"),
    ("password=密码abc123", "密码abc123"),
    ("password=abc密码123", "abc密码123"),
    ("password=ქართული1", "ქართული1"),
    ("DB: postgres://admin:סיסמה99@db.example.com/app", "סיסמה99"),
    ("パスワードはpassword=Hunter2です", "Hunter2"),
]


async def test_screen_input_redacts_passwords_with_letters_of_other_scripts(suite: Suite) -> None:
    texts = [text for text, _ in _PASSWORDS]
    screened = await suite.stub.ScreenInput(pb.ScreenInputRequest(texts=texts), metadata=suite.metadata())
    found = [
        (f.text_index, texts[f.text_index][f.start_offset : f.end_offset])
        for f in screened.findings
        if f.category == C.CATEGORY_SECRET_PASSWORD
    ]
    assert found == [(index, value) for index, (_, value) in enumerate(_PASSWORDS)]
    for (text, value), sanitized in zip(_PASSWORDS, screened.sanitized_texts, strict=True):
        assert sanitized.startswith(text[: text.index(value)] + "[REDACTED:PASSWORD]"), sanitized


async def test_stream_redacts_a_url_password_after_a_user_name_of_another_script(suite: Suite) -> None:
    """The stream released a URL's user name up to its last Chinese or Arabic letter and kept 64 code points
    of it as context; the next scan no longer saw the scheme, and the password went out as written, while
    ScreenOutput redacted it. (Other scripts and chunkings: the unit tests of the stream.)"""
    answer = f"postgres://{'用' * 64}:Hunt#r2x@db.example.com rest"
    at = answer.index("#r2x")
    chunks = [answer[:at], answer[at:]]
    whole = await suite.stub.ScreenOutput(pb.ScreenOutputRequest(text=answer), metadata=suite.metadata())
    assert "Hunt" not in whole.text
    assert released(await suite.screen_stream(chunks)) == whole.text
