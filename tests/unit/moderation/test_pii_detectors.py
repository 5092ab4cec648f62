# ruff: noqa: RUF001, RUF003 - full-width and typographic forms of values are what some tests are about
"""Each PII detector finds its entity in realistic forms and rejects look-alikes that fail its checks."""

from __future__ import annotations

import pytest

from parapet.moderation.v1 import category_pb2 as C
from services.moderation.detectors.credit_card import CreditCardDetector, luhn_valid
from services.moderation.detectors.email import EmailDetector
from services.moderation.detectors.iban import IbanDetector, iban_valid
from services.moderation.detectors.ip_address import IpAddressDetector
from services.moderation.detectors.phone import PhoneDetector
from services.moderation.detectors.ssn import SsnDetector, ssn_valid
from services.moderation.detectors.street_address import StreetAddressDetector
from tests.unit.moderation.moderation_support import WITHOUT_SPACES


def spans(detector: object, text: str) -> list[str]:
    return [text[d.start : d.end] for d in detector.detect(text)]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("mail jane.doe+news@mail.example.co.uk now", ["jane.doe+news@mail.example.co.uk"]),
        ("UtaKortig@jourrapide.com.", ["UtaKortig@jourrapide.com"]),
        ("no address @ here, user@localhost", []),
    ],
)
def test_email(text: str, expected: list[str]) -> None:
    assert spans(EmailDetector(), text) == expected


def test_luhn() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("card 4111 1111 1111 1111 exp 12/29", ["4111 1111 1111 1111"]),
        ("amex 3782-822463-10005", ["3782-822463-10005"]),
        ("pay with 5555555555554444", ["5555555555554444"]),
        ("order 4111 1111 1111 1112", []),  # Luhn fails
        ("tracking 1234 5678 9012 3456", []),  # Luhn fails
        ("0000 0000 0000 0000", []),  # a single repeated digit is no card
    ],
)
def test_credit_card(text: str, expected: list[str]) -> None:
    assert spans(CreditCardDetector(), text) == expected


def test_iban_checksum_and_country_length() -> None:
    assert iban_valid("DE89370400440532013000") and iban_valid("gb82west12345698765432")
    assert not iban_valid("DE89370400440532013001")  # mod-97 fails
    assert not iban_valid("DE8937040044053201300")  # German IBANs have 22 characters


@pytest.mark.parametrize(
    "text, expected",
    [
        ("IBAN: DE89 3704 0044 0532 0130 00.", ["DE89 3704 0044 0532 0130 00"]),
        ("to GB82WEST12345698765432 today", ["GB82WEST12345698765432"]),
        ("to GB82WEST12345698765433 today", []),
    ],
)
def test_iban(text: str, expected: list[str]) -> None:
    assert spans(IbanDetector(), text) == expected


def test_ssn_area_rules() -> None:
    assert ssn_valid("123", "45", "6788")
    for area, group, serial in (("000", "12", "3456"), ("666", "12", "3456"), ("912", "12", "3456"),
                                ("123", "00", "4567"), ("123", "45", "0000"), ("078", "05", "1120")):  # fmt: skip
        assert not ssn_valid(area, group, serial)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("SSN 123-45-6788", ["123-45-6788"]),
        ("her number 853-37-1694 is on file", ["853-37-1694"]),
        ("social security number 123456788", ["123456788"]),  # bare digits only with a label
        ("order 123456788 shipped", []),
        ("id 666-12-3456", []),
    ],
)
def test_ssn(text: str, expected: list[str]) -> None:
    assert spans(SsnDetector(), text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("from 86.121.97.248 and 2001:db8::8a2e:370:7334", ["86.121.97.248", "2001:db8::8a2e:370:7334"]),
        ("version 300.1.2.3 or 1.2.3", []),
        ("at 12:30:45 sharp", []),
    ],
)
def test_ip_address(text: str, expected: list[str]) -> None:
    assert spans(IpAddressDetector(), text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("call +1-984-182-0190 now", ["+1-984-182-0190"]),
        ("Phone: 780-999-2181", ["780-999-2181"]),
        ("ring +46 (0)8 928 571 38 tomorrow", ["+46 (0)8 928 571 38"]),
        ("my cell is 467 3395", ["467 3395"]),  # weak shape, but labelled
        ("in 2019-2023 we sold 1500 units", []),
        ("meeting on 2023-10-05", []),
    ],
)
def test_phone(text: str, expected: list[str]) -> None:
    assert spans(PhoneDetector(), text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "Ship it to 615 Benedum Drive, Springfield, IL 62704 please",
            ["615 Benedum Drive, Springfield, IL 62704"],
        ),
        ("Wohnt in der Pfarrgasse 91 seit Jahren", ["Pfarrgasse 91"]),
        ("Send to P.O. Box 242", ["P.O. Box 242"]),
        ("write to 5 rue de la Paix", ["5 rue de la Paix"]),
        ("Our office: 6076 Piroska u. 97.", ["6076 Piroska u. 97."]),
        ("She lives at Allika 46, Tallinn", ["Allika 46, Tallinn"]),
        ("Windows 10 and Chapter 5 are not addresses", []),
        ("I walked 5 miles down the road", []),
    ],
)
def test_street_address(text: str, expected: list[str]) -> None:
    assert spans(StreetAddressDetector(), text) == expected


def test_detections_are_typed() -> None:
    (found,) = EmailDetector().detect("a@b.io")
    assert (found.category, found.start, found.end, found.detector) == (
        C.CATEGORY_PII_EMAIL,
        0,
        6,
        "regex.email",
    )
    assert 0 < found.score <= 1


@pytest.mark.parametrize(
    "detector, text, expected",
    [
        # Full-width digits, as a Japanese or Chinese input method types them: the Luhn check read each
        # as its code point (０ is 65296), so a labelled card passed one time in ten.
        (
            CreditCardDetector(),
            "Pay with ５５００ ００００ ００００ ０００４ please",
            ["５５００ ００００ ００００ ０００４"],
        ),
        # Japanese runs words together: the letter before the number ("は") is no part of it.
        (
            CreditCardDetector(),
            "カード番号は４１１１－１１１１－１１１１－１１１１です",
            ["４１１１－１１１１－１１１１－１１１１"],
        ),
        # Word processors, and models, set separators as en dashes; no-break spaces group digits.
        (PhoneDetector(), "Call 555–123–4567 tomorrow", ["555–123–4567"]),
        (
            PhoneDetector(),
            "Appelez le 06\u00a012\u00a034\u00a056\u00a078 demain",
            ["06\u00a012\u00a034\u00a056\u00a078"],
        ),
        (SsnDetector(), "SSN 219–09–9998 on file", ["219–09–9998"]),
        # A published number, however written, is none.
        (SsnDetector(), "SSN ０７８-０５-１１２０ is the wallet card's", []),
        (
            IbanDetector(),
            "IBAN ＤＥ８９ ３７０４ ００４４ ０５３２ ０１３０ ００.",
            ["ＤＥ８９ ３７０４ ００４４ ０５３２ ０１３０ ００"],
        ),
        (IpAddressDetector(), "from １９２．１６８．１．２０", ["１９２．１６８．１．２０"]),
        (EmailDetector(), "mail ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ now", ["ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ"]),
    ],
)
def test_values_written_in_full_width_or_typographic_forms(
    detector: object, text: str, expected: list[str]
) -> None:
    """Values typed with full-width forms or typographic separators are the same values: they are found,
    checked by their digits' values, and reported at their place in the text as written."""
    assert spans(detector, text) == expected


@pytest.mark.parametrize(
    "detector, value",
    [
        (EmailDetector(), "john@example.com"),
        (PhoneDetector(), "090-1234-5678"),
        (CreditCardDetector(), "4111111111111111"),
        (IbanDetector(), "GB82WEST12345698765432"),
        (SsnDetector(), "536-22-8841"),
        (IpAddressDetector(), "192.168.10.77"),
        (IpAddressDetector(), "2001:db8::8a2e:370:7334"),
        (IpAddressDetector(), "fe80::1%eth0"),
        (StreetAddressDetector(), "1600 Pennsylvania Avenue"),
        (StreetAddressDetector(), "Pfarrgasse 91"),
        (StreetAddressDetector(), "5 rue de la Paix"),
        (StreetAddressDetector(), "Apt 4B"),
        (StreetAddressDetector(), "P.O. Box 242"),
        (StreetAddressDetector(), "FPO AE 09499"),
    ],
)
def test_a_value_run_into_text_without_spaces_is_found_as_typed(detector: object, value: str) -> None:
    """A letter of Japanese, Chinese, Korean or Thai cannot continue an address or a number; judged with
    Python's Unicode word class it did, and the value was not found."""
    for before, after in WITHOUT_SPACES.values():
        for text in (before + value + after, before + value, value + after):
            assert spans(detector, text) == [value], text


@pytest.mark.parametrize(
    "text, expected",
    [
        # RFC 6531: letters beyond ASCII in the local part (and IDNA domains); before, none was found.
        ("Bitte an müller@example.de schreiben", ["müller@example.de"]),
        ("Bitte an mu\u0308ller@example.de schreiben", ["mu\u0308ller@example.de"]),  # decomposed ü
        ("Écrivez à élodie.française@exemple.fr", ["élodie.française@exemple.fr"]),
        ("Пишите на иван@пример.рф", ["иван@пример.рф"]),
        ("メールはjürgen@bücher.deまで", ["jürgen@bücher.de"]),
        # ...but never from the middle of a word: the whole address or nothing.
        ("Grüße: straße_jürgen@example.de", ["straße_jürgen@example.de"]),
        # Letters of scripts written without spaces end an address; such a local part is not found.
        ("ジョン@example.com", []),
        ("a.user@host", []),
    ],
)
def test_email_local_parts_beyond_ascii(text: str, expected: list[str]) -> None:
    assert spans(EmailDetector(), text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "order12345678901234",
        "注文番号order12345678901234です",
        "ABC4111111111111111XYZ",
        "コードABC4111111111111111XYZを入力",
        "build 4111111111111111x",
        "ticket#A536-22-8841",
        "v192.168.10.77b",
        "id 2001:db8::1x",
    ],
)
def test_digits_inside_ascii_words_stay_no_value_whatever_surrounds_them(text: str) -> None:
    """What the boundary checks are for still holds: an ASCII letter or digit continues the value."""
    found = [
        text[d.start : d.end]
        for detector in (
            PhoneDetector(),
            CreditCardDetector(),
            SsnDetector(),
            IpAddressDetector(),
            IbanDetector(),
        )
        for d in detector.detect(text)
    ]
    assert found == []
