"""What metering refuses to count: figures beyond the ceilings that keep its sums (and billing's) within
PostgreSQL bigint, and cost budgets set in another currency than the deployment's."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from parapet.auth.v1 import tenant_policy_pb2 as tp
from parapet.events.usage import MAX_MICROS, MAX_NAMES_BYTES, MAX_TOKENS
from parapet.kit.errors import error_details
from parapet.kit.testing import TestKeys
from parapet.metering.v1 import metering_service_pb2 as pb
from parapet.usage.v1 import money_pb2, token_usage_pb2
from tests.integration.metering.conftest import Metering
from tests.integration.metering.metering_support import caller, new_tenant, reader_policy, usd, write_policies

INT64_MAX = 2**63 - 1
SINCE = timestamp_pb2.Timestamp(seconds=0)


def _at_most(ceiling: int) -> str:
    return f"at most {ceiling}"


async def _violations(call: Awaitable[Any]) -> list[tuple[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    bad_request = error_details(raised.value).bad_request
    assert bad_request is not None
    return [(v.field, v.description) for v in bad_request.field_violations]


async def test_figures_beyond_the_ceilings_are_refused_naming_the_field(
    metering: Metering, keys: TestKeys
) -> None:
    tenant = new_tenant()
    # A token budget no figure can overflow by itself: before the ceilings, one Reserve of 2^63 - 1 filled
    # it and every later Reserve of the window failed INTERNAL (bigint overflow) instead of BUDGET_EXCEEDED.
    budget = tp.Budget(
        budget_id="huge", scope=tp.BUDGET_SCOPE_TENANT, window=tp.BUDGET_WINDOW_DAY, token_limit=INT64_MAX
    )
    write_policies(metering.policy_file, {tenant: reader_policy(budgets=[budget])})
    who = caller(keys, tenant, roles=("analyst",))  # usage.read: a tenant budget's figures are the tenant's
    reserve, settle = metering.stub.Reserve, metering.stub.Settle
    assert await _violations(
        reserve(pb.ReserveRequest(request_id="r", estimated_tokens=INT64_MAX), metadata=who)
    ) == [("estimated_tokens", _at_most(MAX_TOKENS))]
    assert await _violations(
        reserve(pb.ReserveRequest(request_id="r", estimated_cost=usd(MAX_MICROS + 1)), metadata=who)
    ) == [("estimated_cost.amount_micros", _at_most(MAX_MICROS))]
    big = token_usage_pb2.TokenUsage(
        prompt_tokens=2**62, completion_tokens=2**62, cached_tokens=MAX_TOKENS + 1
    )
    assert await _violations(settle(pb.SettleRequest(request_id="s", usage=big), metadata=who)) == [
        ("usage.prompt_tokens", _at_most(MAX_TOKENS)),
        ("usage.completion_tokens", _at_most(MAX_TOKENS)),
        ("usage.cached_tokens", _at_most(MAX_TOKENS)),
    ]
    assert await _violations(settle(pb.SettleRequest(request_id="s", cost=usd(2**62)), metadata=who)) == [
        ("cost.amount_micros", _at_most(MAX_MICROS))
    ]
    # 256 characters each, but of four bytes: billing's rollups could not key such an event, so it was set aside
    # there, uncharged, while metering had counted it (until 2026-12-06).
    wide = "\U0001f600" * 256
    assert await _violations(
        settle(pb.SettleRequest(request_id="s", model=wide, provider=wide, feature=wide), metadata=who)
    ) == [("model", f"model, provider and feature at most {MAX_NAMES_BYTES} bytes together")]
    # Nothing was held or recorded: the budget still takes a reservation, and the usage is empty.
    held = await reserve(pb.ReserveRequest(request_id="r", estimated_tokens=10), metadata=who)
    assert held.reservation.reserved_tokens == 10
    usage = await metering.stub.GetUsage(pb.GetUsageRequest(start_time=SINCE), metadata=who)
    assert usage.total.request_count == 0 and usage.budgets[0].used_tokens == 10


async def test_figures_at_the_ceilings_settle_and_add_up_exactly(metering: Metering, keys: TestKeys) -> None:
    tenant = new_tenant()
    budgets = [
        tp.Budget(
            budget_id="tokens",
            scope=tp.BUDGET_SCOPE_TENANT,
            window=tp.BUDGET_WINDOW_DAY,
            token_limit=INT64_MAX,
        ),
        tp.Budget(
            budget_id="cost",
            scope=tp.BUDGET_SCOPE_USER,
            window=tp.BUDGET_WINDOW_MONTH,
            cost_limit=usd(INT64_MAX),
        ),
    ]
    write_policies(metering.policy_file, {tenant: reader_policy(budgets=budgets)})
    who = caller(keys, tenant, roles=("analyst",))
    ceiling = token_usage_pb2.TokenUsage(
        prompt_tokens=MAX_TOKENS, completion_tokens=MAX_TOKENS, cached_tokens=MAX_TOKENS
    )
    for i in range(3):  # with a reservation at the ceilings, then without one
        reservation_id = ""
        if i < 2:
            reserved = await metering.stub.Reserve(
                pb.ReserveRequest(
                    request_id=f"r{i}", estimated_tokens=MAX_TOKENS, estimated_cost=usd(MAX_MICROS)
                ),
                metadata=who,
            )
            reservation_id = reserved.reservation.reservation_id
        await metering.stub.Settle(
            pb.SettleRequest(
                reservation_id=reservation_id,
                request_id=f"r{i}",
                model="m",
                usage=ceiling,
                cost=usd(MAX_MICROS),
            ),
            metadata=who,
        )
    usage = await metering.stub.GetUsage(pb.GetUsageRequest(start_time=SINCE), metadata=who)
    assert usage.total.request_count == 3
    assert usage.total.usage.prompt_tokens == usage.total.usage.completion_tokens == 3 * MAX_TOKENS
    assert usage.total.cost.amount_micros == 3 * MAX_MICROS
    spent = {b.budget_id: (b.used_tokens, b.used_cost.amount_micros) for b in usage.budgets}
    assert spent == {"tokens": (6 * MAX_TOKENS, 0), "cost": (0, 3 * MAX_MICROS)}


def _yen(amount: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="JPY", amount_micros=amount * 1_000_000)


async def test_a_cost_budget_in_another_currency_refuses_reservations_and_reports_its_own(
    metering: Metering, keys: TestKeys
) -> None:
    tenant = new_tenant()
    budgets = [
        tp.Budget(
            budget_id="tokens", scope=tp.BUDGET_SCOPE_TENANT, window=tp.BUDGET_WINDOW_DAY, token_limit=1000
        ),
        # The deployment's prices are in USD (the default): 1000 JPY was applied as 1000 USD before.
        tp.Budget(
            budget_id="bob-yen",
            scope=tp.BUDGET_SCOPE_USER,
            scope_id="bob",
            window=tp.BUDGET_WINDOW_MONTH,
            cost_limit=_yen(1000),
        ),
    ]
    write_policies(metering.policy_file, {tenant: reader_policy(budgets=budgets)})
    alice, bob = caller(keys, tenant, "alice", roles=("analyst",)), caller(keys, tenant, "bob")

    # Alice is not under the yen budget: her requests are budgeted as before.
    await metering.stub.Reserve(
        pb.ReserveRequest(request_id="a", estimated_tokens=10, estimated_cost=usd(5)), metadata=alice
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await metering.stub.Reserve(
            pb.ReserveRequest(request_id="b", estimated_tokens=10, estimated_cost=usd(5)), metadata=bob
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = error_details(refused.value)
    assert details.reason == "CURRENCY_MISMATCH" and details.error_info is not None
    assert dict(details.error_info.metadata) == {
        "budget_id": "bob-yen",
        "budget_currency_code": "JPY",
        "currency_code": "USD",
    }

    # A spend that happened anyway (no reservation) is recorded, and charged to the budgets metering can
    # measure, never to the yen one.
    await metering.stub.Settle(
        pb.SettleRequest(
            request_id="b-late", usage=token_usage_pb2.TokenUsage(prompt_tokens=7), cost=usd(3_000_000)
        ),
        metadata=bob,
    )
    usage = await metering.stub.GetUsage(pb.GetUsageRequest(start_time=SINCE, user_id="bob"), metadata=alice)
    assert usage.total.request_count == 1 and usage.total.cost == usd(3_000_000)
    statuses = {b.budget_id: b for b in usage.budgets}
    assert statuses["tokens"].used_tokens == 10 + 7
    yen = statuses["bob-yen"]
    assert yen.limit_cost == _yen(1000)  # in its own currency, not as 1000 USD
    assert not yen.HasField("used_cost")  # metering measures no spend in yen
    assert yen.used_percent == 0 and not yen.soft_limit_reached
