"""Period rollover: a reservation made before UTC midnight (and before the month ended) and settled or released
after it frees its hold in the window it was made in, and a settlement of it is charged there too."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2
from sqlalchemy import text

from parapet.auth.v1 import tenant_policy_pb2 as tp
from parapet.kit.database import Database
from parapet.kit.testing import TestKeys
from parapet.metering.v1 import metering_service_pb2 as pb
from parapet.metering.v1 import reservation_pb2
from parapet.usage.v1 import token_usage_pb2
from services.metering.limits import day_start, month_start
from tests.integration.metering.conftest import Metering
from tests.integration.metering.metering_support import caller, new_tenant, reader_policy, usd, write_policies


async def _move_to_previous_windows(database: Database, tenant: str) -> dict[str, datetime]:
    """As if the tenant's reservations had been made at 23:59 UTC on the last day of the previous month: their
    holds, and the counters holding them, in yesterday's window of budget "day" and last month's of "month";
    returns those windows' starts by budget."""
    now = datetime.now(UTC)
    moved = {
        "day": day_start(now) - timedelta(days=1),
        "month": month_start(month_start(now) - timedelta(days=1)),
    }
    async with database.transaction() as session:
        for budget_id, previous in moved.items():
            await session.execute(
                text(
                    "UPDATE budget_counters SET window_start = :old WHERE tenant_id = :t AND budget_id = :b"
                ),
                {"old": previous, "t": tenant, "b": budget_id},
            )
        rows = (
            await session.execute(
                text("SELECT reservation_id, holds FROM reservations WHERE tenant_id = :t"), {"t": tenant}
            )
        ).all()
        for reservation_id, holds in rows:
            for hold in holds:
                hold["window_start"] = moved[hold["budget_id"]].isoformat()
            await session.execute(
                text(
                    "UPDATE reservations SET holds = CAST(:holds AS jsonb), create_time = :made "
                    "WHERE reservation_id = :id"
                ),
                {
                    "holds": json.dumps(holds),
                    "made": day_start(now) - timedelta(minutes=1),
                    "id": reservation_id,
                },
            )
    return moved


async def _counters(database: Database, tenant: str) -> dict[tuple[str, datetime], tuple[int, int]]:
    async with database.session() as session:
        rows = await session.execute(
            text("SELECT budget_id, window_start, used, reserved FROM budget_counters WHERE tenant_id = :t"),
            {"t": tenant},
        )
        return {(r[0], r[1].astimezone(UTC)): (r[2], r[3]) for r in rows}


async def test_a_reservation_across_midnight_frees_and_charges_the_window_it_was_made_in(
    metering: Metering, keys: TestKeys, database_url: str
) -> None:
    tenant = new_tenant()
    budgets = [
        tp.Budget(
            budget_id="day", scope=tp.BUDGET_SCOPE_TENANT, window=tp.BUDGET_WINDOW_DAY, token_limit=1000
        ),
        tp.Budget(
            budget_id="month", scope=tp.BUDGET_SCOPE_USER, window=tp.BUDGET_WINDOW_MONTH, cost_limit=usd(5000)
        ),
    ]
    write_policies(metering.policy_file, {tenant: reader_policy(budgets=budgets)})
    who = caller(keys, tenant, roles=("analyst",))
    database = Database(database_url, "metering")
    try:
        # Settled in one statement (an active reservation), released, and settled after its release.
        reserved = {}
        for request_id in ("settled", "released", "late"):
            answer = await metering.stub.Reserve(
                pb.ReserveRequest(request_id=request_id, estimated_tokens=300, estimated_cost=usd(1000)),
                metadata=who,
            )
            reserved[request_id] = answer.reservation.reservation_id
        moved = await _move_to_previous_windows(database, tenant)
        yesterday, last_month = moved["day"], moved["month"]
        settled = await metering.stub.Settle(
            pb.SettleRequest(
                reservation_id=reserved["settled"],
                request_id="settled",
                usage=token_usage_pb2.TokenUsage(prompt_tokens=250, completion_tokens=100),
                cost=usd(1200),
            ),
            metadata=who,
        )
        assert settled.reservation.state == reservation_pb2.RESERVATION_STATE_SETTLED
        await metering.stub.Release(pb.ReleaseRequest(reservation_id=reserved["released"]), metadata=who)
        await metering.stub.Release(pb.ReleaseRequest(reservation_id=reserved["late"]), metadata=who)
        await metering.stub.Settle(
            pb.SettleRequest(
                reservation_id=reserved["late"],
                request_id="late",
                usage=token_usage_pb2.TokenUsage(prompt_tokens=10, completion_tokens=10),
                cost=usd(30),
            ),
            metadata=who,
        )
        counters = await _counters(database, tenant)
    finally:
        await database.close()
    # Every hold freed where it was held; the spend charged there too, above the estimate included; today's and
    # this month's windows untouched.
    assert counters == {("day", yesterday): (350 + 20, 0), ("month", last_month): (1200 + 30, 0)}
    usage = await metering.stub.GetUsage(
        pb.GetUsageRequest(start_time=timestamp_pb2.Timestamp(seconds=0)), metadata=who
    )
    assert {b.budget_id: (b.used_tokens, b.used_cost.amount_micros) for b in usage.budgets} == {
        "day": (0, 0),
        "month": (0, 0),
    }
    # The ledger dates the usage when it was settled (after midnight): GetUsage and billing count it today.
    assert usage.total.request_count == 2 and usage.total.cost.amount_micros == 1230
