"""Fixtures of the billing tests: keys, a policy file granting usage.read, and ledger/rollup comparison."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from parapet.kit.testing import TestKeys, make_test_keys
from parapet.usage.v1 import money_pb2, token_usage_pb2, usage_event_pb2


@pytest.fixture(scope="module")
def keys() -> TestKeys:
    return make_test_keys()


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policies.json"
    path.write_text("{}")
    return path


def usage_event(tenant: str, i: int) -> usage_event_pb2.UsageEvent:
    """A usage event of ``tenant`` whose figures follow ``i`` (a new event id each time)."""
    event = usage_event_pb2.UsageEvent(
        event_id=str(uuid.uuid4()),
        tenant_id=tenant,
        user_id="u",
        model="m",
        provider="p",
        feature="f",
        usage=token_usage_pb2.TokenUsage(prompt_tokens=i, completion_tokens=2 * i),
        cost=money_pb2.Money(currency_code="USD", amount_micros=1000 + i),
        request_id=f"r-{i}",
    )
    event.occur_time.FromDatetime(datetime.now(UTC))
    return event
