"""Fixtures for kit tests that need no PostgreSQL or NATS (real gRPC servers on port 0 only)."""

from __future__ import annotations

import pytest

from parapet.kit.testing import TestKeys, make_test_keys


@pytest.fixture
def keys() -> TestKeys:
    return make_test_keys()
