"""Reserve, Settle, Release and GetUsage over a real channel against real PostgreSQL and NATS."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from parapet.auth.v1 import tenant_policy_pb2 as tp
from parapet.kit.errors import error_details
from parapet.kit.testing import PAGE_TOKEN_REFUSED, TestKeys, refusal
from parapet.metering.v1 import metering_service_pb2 as pb
from parapet.metering.v1 import reservation_pb2, usage_report_pb2
from parapet.usage.v1 import money_pb2, token_usage_pb2
from tests.integration.metering.conftest import Metering
from tests.integration.metering.metering_support import (
    caller,
    new_tenant,
    reader_policy,
    settle,
    usd,
    write_policies,
)

ACTIVE = reservation_pb2.RESERVATION_STATE_ACTIVE
SETTLED = reservation_pb2.RESERVATION_STATE_SETTLED
RELEASED = reservation_pb2.RESERVATION_STATE_RELEASED
EXPIRED = reservation_pb2.RESERVATION_STATE_EXPIRED


def token_budget(
    limit: int,
    *,
    soft: int = 0,
    scope: tp.BudgetScope.ValueType = tp.BUDGET_SCOPE_TENANT,
    budget_id: str = "daily",
) -> tp.Budget:
    return tp.Budget(
        budget_id=budget_id,
        scope=scope,
        window=tp.BUDGET_WINDOW_DAY,
        token_limit=limit,
        soft_limit_percent=soft,
    )


def settle_request(
    reservation_id: str, request_id: str, prompt: int, completion: int, micros: int
) -> pb.SettleRequest:
    return pb.SettleRequest(
        reservation_id=reservation_id,
        request_id=request_id,
        feature="support",
        model="gpt-4o-mini",
        provider="openai",
        requested_model="fast",
        usage=token_usage_pb2.TokenUsage(prompt_tokens=prompt, completion_tokens=completion),
        cost=usd(micros),
        latency=duration_pb2.Duration(nanos=120_000_000),
    )


async def test_reserve_settle_release_lifecycle_and_idempotency(metering: Metering, keys: TestKeys) -> None:
    tenant = new_tenant()
    write_policies(metering.policy_file, {tenant: reader_policy(budgets=[token_budget(1000)])})
    who = caller(keys, tenant, roles=("analyst",))  # usage.read: a tenant budget's figures are the tenant's
    first = await metering.stub.Reserve(
        pb.ReserveRequest(request_id="r1", estimated_tokens=600), metadata=who
    )
    assert first.reservation.state == ACTIVE and first.reservation.reserved_tokens == 600
    again = await metering.stub.Reserve(
        pb.ReserveRequest(request_id="r1", estimated_tokens=600), metadata=who
    )
    assert again.reservation.reservation_id == first.reservation.reservation_id  # a retry holds nothing more

    # 600 held of 1000: another 600 does not fit.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await metering.stub.Reserve(pb.ReserveRequest(request_id="r2", estimated_tokens=600), metadata=who)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = error_details(refused.value)
    assert details.reason == "BUDGET_EXCEEDED"
    assert details.error_info is not None and details.error_info.metadata["budget_id"] == "daily"
    assert details.quota_failure is not None
    assert details.quota_failure.violations[0].subject == f"tenant:{tenant}"
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert details.retry_after is not None
    assert 0 < details.retry_after <= (tomorrow - datetime.now(UTC)).total_seconds() + 1

    settled = await metering.stub.Settle(
        settle_request(first.reservation.reservation_id, "r1", 100, 50, 1234), metadata=who
    )
    assert settled.reservation.state == SETTLED and settled.usage_event_id
    repeat = await metering.stub.Settle(
        settle_request(first.reservation.reservation_id, "r1", 100, 50, 1234), metadata=who
    )
    assert repeat.usage_event_id == settled.usage_event_id  # the ledger is keyed by request_id
    with pytest.raises(grpc.aio.AioRpcError) as conflict:
        await metering.stub.Settle(
            settle_request(first.reservation.reservation_id, "r1", 100, 51, 1234), metadata=who
        )
    assert error_details(conflict.value).reason == "SETTLEMENT_CONFLICT"

    # The hold became the actual 150 tokens: 850 remain, so 600 fits now; release frees it again.
    second = await metering.stub.Reserve(
        pb.ReserveRequest(request_id="r2", estimated_tokens=600), metadata=who
    )
    released = await metering.stub.Release(
        pb.ReleaseRequest(reservation_id=second.reservation.reservation_id, reason="UPSTREAM_FAILED"),
        metadata=who,
    )
    assert released.reservation.state == RELEASED
    twice = await metering.stub.Release(
        pb.ReleaseRequest(reservation_id=second.reservation.reservation_id), metadata=who
    )
    assert twice.reservation.state == RELEASED
    third = await metering.stub.Reserve(
        pb.ReserveRequest(request_id="r3", estimated_tokens=850), metadata=who
    )
    assert third.reservation.state == ACTIVE

    usage = await metering.stub.GetUsage(
        pb.GetUsageRequest(start_time=timestamp_pb2.Timestamp(seconds=0)), metadata=who
    )
    assert usage.total.request_count == 1
    assert usage.total.usage.prompt_tokens == 100 and usage.total.usage.completion_tokens == 50
    assert usage.total.cost.amount_micros == 1234
    by_day = await metering.stub.GetUsage(
        pb.GetUsageRequest(
            start_time=timestamp_pb2.Timestamp(seconds=0), group_by=[usage_report_pb2.USAGE_DIMENSION_DAY]
        ),
        metadata=who,
    )
    (day,) = by_day.aggregates
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert day.bucket_start_time.ToDatetime(UTC) == today and day.request_count == 1
    (status,) = usage.budgets
    assert status.used_tokens == 150 + 850 and status.limit_tokens == 1000 and status.used_percent == 100


async def test_soft_limit_warns_and_user_and_key_budgets_apply(metering: Metering, keys: TestKeys) -> None:
    tenant = new_tenant()
    budgets = [
        token_budget(1000, soft=50),
        tp.Budget(
            budget_id="per-user",
            scope=tp.BUDGET_SCOPE_USER,
            window=tp.BUDGET_WINDOW_MONTH,
            cost_limit=usd(5_000),
        ),
        token_budget(300, scope=tp.BUDGET_SCOPE_API_KEY, budget_id="key"),
    ]
    write_policies(metering.policy_file, {tenant: tp.TenantPolicy(budgets=budgets)})
    alice = caller(keys, tenant, "alice", api_key_id="k1")
    warned = await metering.stub.Reserve(
        pb.ReserveRequest(request_id="a", estimated_tokens=250, estimated_cost=usd(1_000)), metadata=alice
    )
    assert [w.budget_id for w in warned.soft_limit_warnings] == []
    warned = await metering.stub.Reserve(
        pb.ReserveRequest(request_id="b", estimated_tokens=40, estimated_cost=usd(1_000)), metadata=alice
    )
    assert warned.soft_limit_warnings == []  # 290 of 1000 tokens
    with pytest.raises(grpc.aio.AioRpcError) as key_limit:  # 290 + 20 > 300 on the key's budget
        await metering.stub.Reserve(pb.ReserveRequest(request_id="c", estimated_tokens=20), metadata=alice)
    assert error_details(key_limit.value).quota_failure.violations[0].subject == "api_key:k1"  # type: ignore[union-attr]
    bob = caller(keys, tenant, "bob")
    soft = await metering.stub.Reserve(
        pb.ReserveRequest(request_id="d", estimated_tokens=300, estimated_cost=usd(4_000)), metadata=bob
    )
    assert [w.budget_id for w in soft.soft_limit_warnings] == ["daily"]  # 590 of 1000 >= 50 %
    assert soft.soft_limit_warnings[0].used_tokens == 590
    with pytest.raises(grpc.aio.AioRpcError) as cost_limit:  # bob's own month: 4000 + 1001 > 5000 micros
        await metering.stub.Reserve(
            pb.ReserveRequest(request_id="e", estimated_tokens=1, estimated_cost=usd(1_001)), metadata=bob
        )
    details = error_details(cost_limit.value)
    assert details.reason == "BUDGET_EXCEEDED"
    assert details.quota_failure.violations[0].subject == "user:bob"  # type: ignore[union-attr]
    with pytest.raises(grpc.aio.AioRpcError) as currency:
        await metering.stub.Reserve(
            pb.ReserveRequest(
                request_id="f", estimated_cost=money_pb2.Money(currency_code="EUR", amount_micros=1)
            ),
            metadata=bob,
        )
    assert error_details(currency.value).reason == "CURRENCY_MISMATCH"


async def test_usage_pages_and_its_token_serves_only_its_query_and_caller(
    metering: Metering, keys: TestKeys
) -> None:
    tenant = new_tenant()
    write_policies(metering.policy_file, {tenant: reader_policy()})
    alice = caller(keys, tenant, "alice", roles=("analyst",))
    for i, model in enumerate(("m-a", "m-b", "m-c")):
        await metering.stub.Settle(settle(i, model, "chat", 1_000), metadata=alice)
    since = timestamp_pb2.Timestamp(seconds=0)
    by_model = [usage_report_pb2.USAGE_DIMENSION_MODEL]
    page = await metering.stub.GetUsage(
        pb.GetUsageRequest(start_time=since, group_by=by_model, page_size=1), metadata=alice
    )
    first_token = page.next_page_token
    assert first_token
    models = [a.model for a in page.aggregates]
    while page.next_page_token:
        page = await metering.stub.GetUsage(
            pb.GetUsageRequest(
                start_time=since, group_by=by_model, page_size=1, page_token=page.next_page_token
            ),
            metadata=alice,
        )
        models += [a.model for a in page.aggregates]
    assert sorted(models) == ["m-a", "m-b", "m-c"] and page.total.request_count == 3

    bob = caller(keys, tenant, "bob", roles=("analyst",))
    later = timestamp_pb2.Timestamp(seconds=1)
    by_feature = [usage_report_pb2.USAGE_DIMENSION_FEATURE]
    for case, request, who in (
        ("other model", pb.GetUsageRequest(start_time=since, group_by=by_model, model="m-a"), alice),
        ("other grouping", pb.GetUsageRequest(start_time=since, group_by=by_feature), alice),
        ("other period", pb.GetUsageRequest(start_time=later, group_by=by_model), alice),
        ("other caller", pb.GetUsageRequest(start_time=since, group_by=by_model), bob),
    ):
        request.page_token = first_token
        assert await refusal(metering.stub.GetUsage(request, metadata=who)) == PAGE_TOKEN_REFUSED, case


async def test_usage_pages_neither_repeat_nor_skip_a_group_when_usage_arrives_between_them(
    metering: Metering, keys: TestKeys
) -> None:
    """Page tokens were offsets into the grouped aggregates: a group that appeared between two pages before the
    position reached (a user's first request) moved every later group one place on, and the next page repeated the
    last group of the previous one, which a client listing usage per user counted twice."""
    tenant = new_tenant()
    write_policies(metering.policy_file, {tenant: reader_policy()})
    reader = caller(keys, tenant, "reader", roles=("analyst",))
    for i, user in enumerate(("bob", "carol", "dave")):
        await metering.stub.Settle(settle(i, "m", "chat", 1_000), metadata=caller(keys, tenant, user))
    by_user = pb.GetUsageRequest(
        start_time=timestamp_pb2.Timestamp(seconds=0),
        group_by=[usage_report_pb2.USAGE_DIMENSION_USER],
        page_size=2,
    )
    first = await metering.stub.GetUsage(by_user, metadata=reader)
    assert [a.user_id for a in first.aggregates] == ["bob", "carol"]
    # New usage before and at the position reached: a new group in front of it, and more of the last one listed.
    await metering.stub.Settle(settle(3, "m", "chat", 1_000), metadata=caller(keys, tenant, "alice"))
    await metering.stub.Settle(settle(4, "m", "chat", 1_000), metadata=caller(keys, tenant, "carol"))
    by_user.page_token = first.next_page_token
    second = await metering.stub.GetUsage(by_user, metadata=reader)
    assert [a.user_id for a in second.aggregates] == ["dave"]
    assert second.next_page_token == "" and second.total.request_count == 5

    # By day and user, one group a page: each once (the position is a day and a user).
    by_day = pb.GetUsageRequest(
        start_time=by_user.start_time,
        group_by=[usage_report_pb2.USAGE_DIMENSION_DAY, usage_report_pb2.USAGE_DIMENSION_USER],
        page_size=1,
    )
    listed, tokens = [], []
    while True:
        page = await metering.stub.GetUsage(by_day, metadata=reader)
        listed += [(a.bucket_start_time.seconds, a.user_id) for a in page.aggregates]
        if not page.next_page_token:
            break
        tokens.append(page.next_page_token)
        by_day.page_token = page.next_page_token
    assert sorted(listed) == listed and sorted(user for _, user in listed) == [
        "alice",
        "bob",
        "carol",
        "dave",
    ]
    # A position that names no group of the query, under a real token's query key, is no token of ours.
    payload = json.loads(base64.urlsafe_b64decode(tokens[0]))
    by_day.page_token = base64.urlsafe_b64encode(
        json.dumps({"p": ["0" * 64], "q": payload["q"]}).encode()
    ).decode()
    assert await refusal(metering.stub.GetUsage(by_day, metadata=reader)) == PAGE_TOKEN_REFUSED


async def test_settle_naming_no_reservation_settles_the_requests_own_hold(
    metering: Metering, keys: TestKeys
) -> None:
    """The gateway settles without a reservation_id when Reserve did not answer in time (its deadline), yet
    that Reserve may have committed. Before, Settle charged the usage besides and left the hold in place until
    it expired: 800 held + 100 used of 1000 refused the tenant's next requests for the reservation's ttl."""
    tenant = new_tenant()
    write_policies(metering.policy_file, {tenant: reader_policy(budgets=[token_budget(1000)])})
    who = caller(keys, tenant, roles=("analyst",))  # usage.read: a tenant budget's figures are the tenant's
    held = await metering.stub.Reserve(pb.ReserveRequest(request_id="q1", estimated_tokens=800), metadata=who)
    unnamed = pb.SettleRequest(
        request_id="q1", usage=token_usage_pb2.TokenUsage(prompt_tokens=60, completion_tokens=40)
    )
    settled = await metering.stub.Settle(unnamed, metadata=who)
    assert settled.reservation.reservation_id == held.reservation.reservation_id
    assert settled.reservation.state == SETTLED
    repeat = await metering.stub.Settle(unnamed, metadata=who)
    assert repeat.usage_event_id == settled.usage_event_id
    usage = await metering.stub.GetUsage(
        pb.GetUsageRequest(start_time=timestamp_pb2.Timestamp(seconds=0)), metadata=who
    )
    assert usage.total.request_count == 1 and usage.budgets[0].used_tokens == 100
    roomy = await metering.stub.Reserve(
        pb.ReserveRequest(request_id="q2", estimated_tokens=900), metadata=who
    )
    assert roomy.reservation.state == ACTIVE


async def test_budget_status_names_its_scope_as_the_contract_says(metering: Metering, keys: TestKeys) -> None:
    """BudgetStatus.scope_id is "tenant", or the user or API key id (budget_status.proto); it carried the
    QuotaFailure subject instead ("tenant:<id>", "user:<id>"), which no client of the contract expects."""
    tenant = new_tenant()
    budgets = [
        token_budget(1000, soft=10),
        token_budget(1000, soft=10, scope=tp.BUDGET_SCOPE_USER, budget_id="per-user"),
        token_budget(1000, soft=10, scope=tp.BUDGET_SCOPE_API_KEY, budget_id="per-key"),
    ]
    write_policies(metering.policy_file, {tenant: reader_policy(budgets=budgets)})
    who = caller(keys, tenant, "alice", api_key_id="k1", roles=("analyst",))
    held = await metering.stub.Reserve(pb.ReserveRequest(request_id="s1", estimated_tokens=500), metadata=who)
    assert {w.budget_id: w.scope_id for w in held.soft_limit_warnings} == {
        "daily": "tenant",
        "per-user": "alice",
        "per-key": "k1",
    }
    usage = await metering.stub.GetUsage(
        pb.GetUsageRequest(start_time=timestamp_pb2.Timestamp(seconds=0)), metadata=who
    )
    # A reader sees the budgets that apply to its own call; without usage.read, its user's only (the tenant's
    # figures are everyone's spend).
    assert sorted(b.scope_id for b in usage.budgets) == ["alice", "k1", "tenant"]
    own = await metering.stub.GetUsage(
        pb.GetUsageRequest(start_time=timestamp_pb2.Timestamp(seconds=0)),
        metadata=caller(keys, tenant, "alice", api_key_id="k1"),
    )
    assert [b.scope_id for b in own.budgets] == ["alice"]
