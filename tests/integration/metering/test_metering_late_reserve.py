"""A Reserve that commits after its request was settled without a reservation holds nothing.

The gateway settles a request naming no reservation when its Reserve did not answer in time; that Reserve may
still commit afterwards. Until 2026-12-06 it then held its estimate until the reservation expired (5 minutes by
default, up to an hour), refusing the caller's next requests meanwhile. Now the Settle claims the request id in
the reservations' unique key, which a late Reserve finds taken (it holds nothing and returns the settled claim),
and a Reserve still in flight when the Settle runs is waited for and settled like any reservation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.auth.v1 import tenant_policy_pb2 as tp
from parapet.kit.database import Database
from parapet.kit.testing import TestKeys
from parapet.metering.v1 import metering_service_pb2 as pb
from parapet.metering.v1 import reservation_pb2
from parapet.usage.v1 import token_usage_pb2
from tests.integration.metering.conftest import Metering
from tests.integration.metering.metering_support import (
    caller,
    migrated_database,
    new_tenant,
    usd,
    write_policies,
)

SETTLED = reservation_pb2.RESERVATION_STATE_SETTLED
LIMIT = 1000


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with migrated_database(database_url, "metering") as database:
        yield database


def _budgeted(metering: Metering, tenant: str) -> None:
    budget = tp.Budget(
        budget_id="daily", scope=tp.BUDGET_SCOPE_TENANT, window=tp.BUDGET_WINDOW_DAY, token_limit=LIMIT
    )
    write_policies(metering.policy_file, {tenant: tp.TenantPolicy(budgets=[budget])})


def _unreserved_settle(request_id: str) -> pb.SettleRequest:
    """What the gateway sends when its Reserve did not answer: no reservation named."""
    return pb.SettleRequest(
        request_id=request_id,
        model="gpt-4o-mini",
        provider="openai",
        usage=token_usage_pb2.TokenUsage(prompt_tokens=100, completion_tokens=50),
        cost=usd(1_500),
    )


async def _counter(database: Database, tenant: str) -> tuple[int, int]:
    async with database.session() as session:
        row = (
            await session.execute(
                text("SELECT used, reserved FROM budget_counters WHERE tenant_id = :t"), {"t": tenant}
            )
        ).one()
    return int(row[0]), int(row[1])


async def _ledger_reservation(database: Database, tenant: str, request_id: str) -> str:
    async with database.session() as session:
        return str(
            (
                await session.execute(
                    text("SELECT reservation_id FROM usage_ledger WHERE tenant_id = :t AND request_id = :r"),
                    {"t": tenant, "r": request_id},
                )
            ).scalar_one()
        )


async def test_a_reserve_arriving_after_its_settlement_holds_nothing(
    metering: Metering, keys: TestKeys, database: Database
) -> None:
    tenant = new_tenant()
    _budgeted(metering, tenant)
    who = caller(keys, tenant)
    settled = await metering.stub.Settle(_unreserved_settle("late"), metadata=who)
    assert not settled.HasField("reservation")

    late = await metering.stub.Reserve(
        pb.ReserveRequest(request_id="late", estimated_tokens=800), metadata=who
    )
    # The request id is the settled request's: nothing is held, and the answer says it is settled.
    assert late.reservation.state == SETTLED and late.reservation.reserved_tokens == 0
    assert await _counter(database, tenant) == (150, 0)
    # The rest of the budget is the caller's at once, not after the late hold would have expired.
    rest = await metering.stub.Reserve(
        pb.ReserveRequest(request_id="next", estimated_tokens=LIMIT - 150), metadata=who
    )
    assert rest.reservation.reserved_tokens == LIMIT - 150

    # The settlement is unchanged: its event names no reservation, and a repeat is the same settlement.
    assert await _ledger_reservation(database, tenant, "late") == ""
    again = await metering.stub.Settle(_unreserved_settle("late"), metadata=who)
    assert again.usage_event_id == settled.usage_event_id
    # So is one naming the claim the late Reserve returned (a client that settles what Reserve answered).
    naming = _unreserved_settle("late")
    naming.reservation_id = late.reservation.reservation_id
    assert (await metering.stub.Settle(naming, metadata=who)).usage_event_id == settled.usage_event_id
    assert await _counter(database, tenant) == (150, LIMIT - 150)  # charged once; only "next" is held


async def _blocked_by(session: AsyncSession, pids: list[int], exclude: list[int]) -> list[int]:
    rows = await session.execute(
        text(
            "SELECT pid FROM pg_stat_activity WHERE pg_blocking_pids(pid) && CAST(:pids AS int[]) "
            "AND NOT pid = ANY(CAST(:exclude AS int[]))"
        ),
        {"pids": pids, "exclude": exclude},
    )
    return [int(r[0]) for r in rows]


async def _wait_blocked(database: Database, pids: list[int], exclude: list[int] = []) -> int:  # noqa: B006
    """The first backend waiting on a lock one of ``pids`` holds (other than ``exclude``)."""
    deadline = time.monotonic() + 10
    while True:
        async with database.session() as session:
            found = await _blocked_by(session, pids, exclude)
        if found:
            return found[0]
        assert time.monotonic() < deadline, "no backend ever waited"
        await asyncio.sleep(0.02)


async def test_a_reserve_still_in_flight_when_its_request_settles_is_settled_not_left_held(
    metering: Metering, keys: TestKeys, database: Database
) -> None:
    """The race itself: the Reserve has inserted its reservation but not committed (here it waits on its budget
    counter, which the test locks) when the Settle naming none looks for it. The Settle waits for it on the
    reservations' unique key, then settles it: its hold becomes the spend."""
    tenant = new_tenant()
    _budgeted(metering, tenant)
    who = caller(keys, tenant)
    warm = await metering.stub.Reserve(pb.ReserveRequest(request_id="warm", estimated_tokens=1), metadata=who)
    await metering.stub.Release(
        pb.ReleaseRequest(reservation_id=warm.reservation.reservation_id), metadata=who
    )

    pending: list[asyncio.Future[Any]] = []
    async with database.transaction() as lock:
        await lock.execute(
            text("SELECT 1 FROM budget_counters WHERE tenant_id = :t FOR UPDATE"), {"t": tenant}
        )
        holder = int((await lock.execute(text("SELECT pg_backend_pid()"))).scalar_one())
        pending.append(
            asyncio.ensure_future(
                metering.stub.Reserve(
                    pb.ReserveRequest(request_id="race", estimated_tokens=900), metadata=who
                )
            )
        )
        reserve_pid = await _wait_blocked(database, [holder])
        pending.append(asyncio.ensure_future(metering.stub.Settle(_unreserved_settle("race"), metadata=who)))
        await _wait_blocked(database, [holder, reserve_pid], exclude=[reserve_pid])
    reserved, settled = await asyncio.gather(*pending)

    reservation_id = reserved.reservation.reservation_id
    assert settled.reservation.reservation_id == reservation_id and settled.reservation.state == SETTLED
    assert await _ledger_reservation(database, tenant, "race") == reservation_id
    assert await _counter(database, tenant) == (150, 0)  # the hold became the spend; nothing left held
