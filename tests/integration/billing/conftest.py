"""Fixtures of the billing tests: keys, a policy file granting usage.read, the migrated billing schema, and usage
events applied to the rollups directly."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from parapet.kit.database import Database
from parapet.kit.testing import TestKeys, make_test_keys
from parapet.usage.v1 import money_pb2, token_usage_pb2, usage_event_pb2
from services.billing import rollups
from tests.integration.metering.metering_support import migrated_database


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


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with migrated_database(database_url, "billing") as database:
        yield database


async def apply_events(database: Database, events: Sequence[usage_event_pb2.UsageEvent]) -> int:
    """Applies ``events`` to the rollups in one transaction, as the consumer does a batch; returns the new ones."""
    async with database.transaction() as session:
        return await rollups.apply(session, list(events))
