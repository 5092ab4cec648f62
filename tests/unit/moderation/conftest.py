"""The stream and detector tests' screener (without the name model), built once per module. What those tests
and moderation's integration tests share besides is in ``moderation_support``."""

from __future__ import annotations

import pytest

from services.moderation.screener import Screener


@pytest.fixture(scope="module")
def screener() -> Screener:
    return Screener(ner=False)
