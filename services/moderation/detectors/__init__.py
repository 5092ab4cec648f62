"""Detectors, one module each, behind the ``Detector`` protocol of ``base``."""

from __future__ import annotations

from services.moderation.detectors.api_keys import ApiKeyDetector
from services.moderation.detectors.base import Detection, Detector
from services.moderation.detectors.credit_card import CreditCardDetector
from services.moderation.detectors.email import EmailDetector
from services.moderation.detectors.iban import IbanDetector
from services.moderation.detectors.ip_address import IpAddressDetector
from services.moderation.detectors.json_web_token import JwtDetector
from services.moderation.detectors.passwords import PasswordDetector
from services.moderation.detectors.phone import PhoneDetector
from services.moderation.detectors.private_keys import PrivateKeyDetector
from services.moderation.detectors.ssn import SsnDetector
from services.moderation.detectors.street_address import StreetAddressDetector


def pattern_detectors() -> tuple[Detector, ...]:
    """PII and secret detectors that need no model: cheap enough for every text and every stream chunk."""
    return (
        EmailDetector(),
        PhoneDetector(),
        CreditCardDetector(),
        IbanDetector(),
        SsnDetector(),
        IpAddressDetector(),
        StreetAddressDetector(),
        ApiKeyDetector(),
        PrivateKeyDetector(),
        JwtDetector(),
        PasswordDetector(),
    )


__all__ = ["Detection", "Detector", "pattern_detectors"]
