"""Settle's one statement (settle_sql) against real PostgreSQL: what it writes, and that it writes nothing
where the statement path must decide (the RPC tests cover those paths through the service)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from parapet.kit.testing import TestKeys
from parapet.metering.v1 import metering_service_pb2 as pb
from parapet.usage.v1.token_usage_pb2 import TokenUsage
from services.metering import reservations, settle_sql
from services.metering.ledger import UsageRecord
from tests.integration.metering.conftest import Metering
from tests.integration.metering.metering_support import caller, new_tenant, reader_policy, write_policies
from tests.integration.metering.test_metering_rpcs import token_budget


@pytest.fixture
async def engine(database_url: str, metering: Metering) -> AsyncIterator[AsyncEngine]:
    """Raw connections to metering's schema (the service is running, so its migrations are applied)."""
    engine = reservations.reserve_engine(database_url, "metering")
    try:
        yield engine
    finally:
        await engine.dispose()


def usage(tenant: str, request_id: str, reservation_id: str, prompt: int, completion: int) -> UsageRecord:
    return UsageRecord(
        tenant_id=tenant,
        request_id=request_id,
        user_id="alice",
        api_key_id="",
        reservation_id=reservation_id,
        feature="support",
        model="gpt-4o-mini",
        requested_model="gpt-4o-mini",
        provider="openai",
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=0,
        estimated=False,
        cost_micros=1234,
        currency_code="USD",
        cached=False,
        latency_micros=5000,
        occur_time=datetime.now(UTC),
        labels={"team": "support"},
    )


async def settle(engine: AsyncEngine, record: UsageRecord) -> tuple[Any, ...] | None:
    async with reservations.autocommit_connection(engine) as connection:
        return await settle_sql.execute(connection, record)


async def facts(engine: AsyncEngine, tenant: str) -> dict[str, Any]:
    async with engine.connect() as connection:

        async def one(sql: str) -> Any:
            return (await connection.execute(text(sql), {"t": tenant})).scalar_one()

        return {
            "states": await one(
                "SELECT array_agg(state ORDER BY request_id) FROM reservations WHERE tenant_id = :t"
            ),
            "ledger": await one("SELECT count(*) FROM usage_ledger WHERE tenant_id = :t"),
            "outbox": await one(
                "SELECT count(*) FROM outbox o JOIN usage_ledger l USING (event_id) WHERE l.tenant_id = :t"
            ),
            "counter": await one(
                "SELECT array[used, reserved] FROM budget_counters WHERE tenant_id = :t AND budget_id = 'daily'"
            ),
        }


def tenant_with_budget(metering: Metering, keys: TestKeys) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A new tenant with a daily budget of 1,000 tokens, and its user's call metadata."""
    tenant = new_tenant()
    write_policies(metering.policy_file, {tenant: reader_policy(budgets=[token_budget(1000)])})
    return tenant, caller(keys, tenant)


async def test_an_active_reservation_settles_in_one_statement_once(
    metering: Metering, keys: TestKeys, engine: AsyncEngine
) -> None:
    tenant, who = tenant_with_budget(metering, keys)
    held = await metering.stub.Reserve(pb.ReserveRequest(request_id="r1", estimated_tokens=600), metadata=who)
    other = await metering.stub.Reserve(
        pb.ReserveRequest(request_id="r2", estimated_tokens=100), metadata=who
    )
    assert (await facts(engine, tenant))["counter"] == [0, 700]

    record = usage(tenant, "r1", held.reservation.reservation_id, 100, 50)
    columns = await settle(engine, record)
    assert columns is not None
    settled = reservations.row_from_columns(columns)
    assert (settled.reservation_id, settled.request_id, settled.state) == (
        held.reservation.reservation_id,
        "r1",
        "settled",
    )
    # The hold of 600 became the 150 tokens spent; r2's 100 stay held.
    assert await facts(engine, tenant) == {
        "states": ["settled", "active"],
        "ledger": 1,
        "outbox": 1,
        "counter": [150, 100],
    }

    # Where the statement does not apply it writes nothing, and the statement path decides: the same request
    # again (its reservation is no longer active), another request's reservation, an unknown reservation.
    before = await facts(engine, tenant)
    assert await settle(engine, usage(tenant, "r1", held.reservation.reservation_id, 100, 50)) is None
    assert await settle(engine, usage(tenant, "r9", other.reservation.reservation_id, 1, 1)) is None
    assert await settle(engine, usage(tenant, "r2", str(uuid.uuid4()), 1, 1)) is None
    assert await facts(engine, tenant) == before


async def test_a_request_already_in_the_ledger_rolls_the_statement_back(
    metering: Metering, keys: TestKeys, engine: AsyncEngine
) -> None:
    # The ledger already holds r1 (settled without a reservation), while a reservation of r1 is still active:
    # the statement matched the reservation, the ledger row conflicted, so everything it did is undone.
    tenant, who = tenant_with_budget(metering, keys)
    held = await metering.stub.Reserve(pb.ReserveRequest(request_id="r1", estimated_tokens=600), metadata=who)
    await metering.stub.Settle(
        pb.SettleRequest(request_id="r1", usage=TokenUsage(prompt_tokens=10, completion_tokens=5)),
        metadata=who,
    )
    before = await facts(engine, tenant)
    assert before["states"] == ["active"] and before["ledger"] == 1

    assert await settle(engine, usage(tenant, "r1", held.reservation.reservation_id, 10, 5)) is None
    assert await facts(engine, tenant) == before
