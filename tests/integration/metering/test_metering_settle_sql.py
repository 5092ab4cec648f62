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

from parapet.auth.v1 import tenant_policy_pb2 as tp
from parapet.kit.database import Database
from parapet.kit.testing import TestKeys
from parapet.metering.v1 import metering_service_pb2 as pb
from parapet.usage.v1.token_usage_pb2 import TokenUsage
from parapet.usage.v1.usage_event_pb2 import UsageEvent
from services.metering import ledger, reservations, settle_sql, settlement
from services.metering.ledger import UsageRecord
from tests.integration.metering.conftest import Metering
from tests.integration.metering.metering_support import (
    caller,
    new_tenant,
    reader_policy,
    usage,
    usd,
    write_policies,
)
from tests.integration.metering.test_metering_rpcs import token_budget


@pytest.fixture
async def engine(database_url: str, metering: Metering) -> AsyncIterator[AsyncEngine]:
    """Raw connections to metering's schema (the service is running, so its migrations are applied)."""
    engine = reservations.reserve_engine(database_url, "metering")
    try:
        yield engine
    finally:
        await engine.dispose()


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
    """A new tenant with a daily budget of 1,000 tokens and a monthly one of $1, and its user's metadata."""
    tenant = new_tenant()
    cost = tp.Budget(
        budget_id="monthly-cost",
        scope=tp.BUDGET_SCOPE_TENANT,
        window=tp.BUDGET_WINDOW_MONTH,
        cost_limit=usd(10**6),
    )
    write_policies(metering.policy_file, {tenant: reader_policy(budgets=[token_budget(1000), cost])})
    return tenant, caller(keys, tenant)


async def written(engine: AsyncEngine, tenant: str, request_id: str) -> dict[str, Any]:
    """What a settlement of ``request_id`` left: its ledger row and outbox row, without their own ids."""
    async with engine.connect() as connection:
        row = (
            (
                await connection.execute(
                    text(
                        "SELECT l.*, o.subject, o.payload, o.headers FROM usage_ledger l JOIN outbox o USING "
                        "(event_id) WHERE l.tenant_id = :t AND l.request_id = :r"
                    ),
                    {"t": tenant, "r": request_id},
                )
            )
            .mappings()
            .one()
        )
    facts = {
        k: v for k, v in row.items() if k not in ("event_id", "request_id", "reservation_id", "create_time")
    }
    event = UsageEvent.FromString(facts.pop("payload"))
    for own in ("event_id", "request_id", "reservation_id"):
        event.ClearField(own)
    facts["event"] = event
    facts["headers"] = {k: v for k, v in facts["headers"].items() if k != "ce-id"}
    return facts


async def counters(engine: AsyncEngine, tenant: str) -> dict[str, list[int]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT budget_id, used, reserved FROM budget_counters WHERE tenant_id = :t"), {"t": tenant}
        )
        return {budget: [used, reserved] for budget, used, reserved in rows}


async def test_the_statement_writes_what_the_statements_path_writes(
    metering: Metering, keys: TestKeys, engine: AsyncEngine, database_url: str
) -> None:
    # Two identical requests, token and cost budgets held: one settled by the statement, one by the ORM path.
    tenant, who = tenant_with_budget(metering, keys)
    held = {
        r: (
            await metering.stub.Reserve(
                pb.ReserveRequest(request_id=r, estimated_tokens=300, estimated_cost=usd(5000)), metadata=who
            )
        ).reservation.reservation_id
        for r in ("fast", "slow")
    }
    occur = datetime.now(UTC)
    database = Database(database_url, "metering")
    try:
        start = await counters(engine, tenant)
        fast = settlement.settle(
            database, usage(tenant, "fast", held["fast"], 100, 50, occur), [], engine=engine
        )
        assert (await fast).reservation is not None
        after_fast = await counters(engine, tenant)
        slow = await settlement.settle(database, usage(tenant, "slow", held["slow"], 100, 50, occur), [])
        assert slow.reservation is not None and slow.reservation.state == "settled"
        after_slow = await counters(engine, tenant)
    finally:
        await database.close()
    assert await written(engine, tenant, "fast") == await written(engine, tenant, "slow")
    # Each settlement freed its own 300 tokens / 5,000 micros and added the same spend (150 tokens, 1,234 micros).
    moved = {b: [after_fast[b][i] - start[b][i] for i in (0, 1)] for b in start}
    assert moved == {b: [after_slow[b][i] - after_fast[b][i] for i in (0, 1)] for b in start}
    assert moved == {"daily": [150, -300], "monthly-cost": [1234, -5000]}


async def test_the_service_path_settles_by_the_statement(
    metering: Metering,
    keys: TestKeys,
    engine: AsyncEngine,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With the statements path made to fail, a settlement of an active reservation still succeeds: the
    # service's settle (given the raw engine, as the servicer gives it) used the one statement.
    tenant, who = tenant_with_budget(metering, keys)
    held = await metering.stub.Reserve(pb.ReserveRequest(request_id="r1", estimated_tokens=300), metadata=who)

    async def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the statements path ran")

    monkeypatch.setattr(ledger, "append", never)
    database = Database(database_url, "metering")
    try:
        result = await settlement.settle(
            database, usage(tenant, "r1", held.reservation.reservation_id, 10, 5), [], engine=engine
        )
    finally:
        await database.close()
    assert result.reservation is not None and result.reservation.state == "settled" and result.appended


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
    # The ledger already holds r1 (settled without a reservation before a Reserve of r1 came), while that
    # reservation is active: the statement matched the reservation, the ledger row conflicted, so everything
    # it did is undone. (A Settle naming no reservation after the Reserve settles the reservation itself.)
    # Since 2026-12-06 that Settle claims r1's request id, so a late Reserve holds nothing
    # (test_metering_late_reserve.py); this state still arises once the claim is deleted with its retention.
    tenant, who = tenant_with_budget(metering, keys)
    await metering.stub.Settle(
        pb.SettleRequest(request_id="r1", usage=TokenUsage(prompt_tokens=10, completion_tokens=5)),
        metadata=who,
    )
    async with engine.begin() as connection:
        await connection.execute(
            text("DELETE FROM reservations WHERE tenant_id = :t AND request_id = 'r1'"), {"t": tenant}
        )
    held = await metering.stub.Reserve(pb.ReserveRequest(request_id="r1", estimated_tokens=600), metadata=who)
    before = await facts(engine, tenant)
    assert before["states"] == ["active"] and before["ledger"] == 1

    assert await settle(engine, usage(tenant, "r1", held.reservation.reservation_id, 10, 5)) is None
    assert await facts(engine, tenant) == before
