"""Fixtures of the billing tests: keys, a policy file granting usage.read, and ledger/rollup comparison."""

from __future__ import annotations

from pathlib import Path

import pytest

from parapet.kit.testing import TestKeys, make_test_keys


@pytest.fixture(scope="module")
def keys() -> TestKeys:
    return make_test_keys()


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policies.json"
    path.write_text("{}")
    return path
