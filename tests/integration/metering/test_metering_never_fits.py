"""A Reserve whose estimate alone exceeds a limit's whole capacity can never be granted, in any window: it is
refused FAILED_PRECONDITION ``ESTIMATE_EXCEEDS_LIMIT`` without RetryInfo, so that no client (nor the gateway's
caller) retries it for ever. Until 2026-12-06 it was RESOURCE_EXHAUSTED ``BUDGET_EXCEEDED``/``RATE_LIMITED``
with a RetryInfo until the window reset, after which the same request was refused again."""

from __future__ import annotations

import grpc
import grpc.aio

from parapet.auth.v1 import tenant_policy_pb2 as tp
from parapet.kit.testing import TestKeys, refusal_details
from parapet.metering.v1 import metering_service_pb2 as pb
from tests.integration.metering.conftest import Metering
from tests.integration.metering.metering_support import caller, new_tenant, usd, write_policies


def _daily_tokens(limit: int, budget_id: str = "daily") -> tp.Budget:
    return tp.Budget(
        budget_id=budget_id, scope=tp.BUDGET_SCOPE_TENANT, window=tp.BUDGET_WINDOW_DAY, token_limit=limit
    )


async def test_an_estimate_above_a_budget_s_whole_limit_is_a_failed_precondition_without_retry_info(
    metering: Metering, keys: TestKeys
) -> None:
    tenant = new_tenant()
    user_month = tp.Budget(
        budget_id="per-user", scope=tp.BUDGET_SCOPE_USER, window=tp.BUDGET_WINDOW_MONTH, cost_limit=usd(5_000)
    )
    write_policies(metering.policy_file, {tenant: tp.TenantPolicy(budgets=[_daily_tokens(1000), user_month])})
    who = caller(keys, tenant, "alice")

    details = await refusal_details(
        metering.stub.Reserve(pb.ReserveRequest(request_id="big", estimated_tokens=1001), metadata=who)
    )
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION, details
    assert details.reason == "ESTIMATE_EXCEEDS_LIMIT"
    assert details.retry_info is None  # no window will ever hold it: nothing to wait for
    assert details.error_info is not None
    assert details.error_info.metadata["budget_id"] == "daily"
    assert details.error_info.metadata["scope"] == f"tenant:{tenant}"
    assert (details.error_info.metadata["estimate"], details.error_info.metadata["limit"]) == ("1001", "1000")
    assert details.quota_failure is not None
    (violation,) = details.quota_failure.violations
    assert violation.subject == f"tenant:{tenant}"
    assert "exceeds the limit itself" in violation.description and "1001" in violation.description

    # A cost budget alike: 5,001 micros can never fit a 5,000-micro month.
    details = await refusal_details(
        metering.stub.Reserve(
            pb.ReserveRequest(request_id="dear", estimated_tokens=1, estimated_cost=usd(5_001)), metadata=who
        )
    )
    assert (details.code, details.reason, details.retry_info) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ESTIMATE_EXCEEDS_LIMIT",
        None,
    )
    assert details.quota_failure is not None
    assert [v.subject for v in details.quota_failure.violations] == ["user:alice"]

    # Nothing was held by either refusal: the whole limit is still there for a request that fits it.
    whole = await metering.stub.Reserve(
        pb.ReserveRequest(request_id="fits", estimated_tokens=1000), metadata=who
    )
    assert whole.reservation.reserved_tokens == 1000


async def test_a_full_window_is_still_resource_exhausted_with_retry_info(
    metering: Metering, keys: TestKeys
) -> None:
    """Only an estimate no window can hold changes code: one that fits the limit but not what is left of it
    waits for the window to reset, as before. When both apply, retrying cannot help: FAILED_PRECONDITION,
    naming only the limit the estimate exceeds by itself."""
    tenant = new_tenant()
    alice_small = tp.Budget(
        budget_id="small",
        scope=tp.BUDGET_SCOPE_USER,
        scope_id="alice",
        window=tp.BUDGET_WINDOW_DAY,
        token_limit=100,
    )
    write_policies(
        metering.policy_file, {tenant: tp.TenantPolicy(budgets=[_daily_tokens(1000), alice_small])}
    )
    alice, bob = caller(keys, tenant, "alice"), caller(keys, tenant, "bob")
    await metering.stub.Reserve(pb.ReserveRequest(request_id="b1", estimated_tokens=950), metadata=bob)

    details = await refusal_details(
        metering.stub.Reserve(pb.ReserveRequest(request_id="b2", estimated_tokens=60), metadata=bob)
    )
    assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "BUDGET_EXCEEDED")
    assert details.retry_after is not None and details.retry_after > 0

    # 200 fits "daily" (not now: 950 of 1000 are held) but never alice's "small".
    details = await refusal_details(
        metering.stub.Reserve(pb.ReserveRequest(request_id="a1", estimated_tokens=200), metadata=alice)
    )
    assert (details.code, details.reason, details.retry_info) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ESTIMATE_EXCEEDS_LIMIT",
        None,
    )
    assert details.error_info is not None and details.error_info.metadata["budget_id"] == "small"
    assert details.quota_failure is not None
    assert [v.subject for v in details.quota_failure.violations] == ["user:alice"]


async def test_an_estimate_above_a_tokens_per_minute_limit_is_a_failed_precondition(
    metering: Metering, keys: TestKeys
) -> None:
    tenant = new_tenant()
    limit = tp.RateLimit(scope=tp.RATE_LIMIT_SCOPE_API_KEY, tokens_per_minute=1_000)
    write_policies(metering.policy_file, {tenant: tp.TenantPolicy(rate_limits=[limit])})
    who = caller(keys, tenant, api_key_id="k1")

    # The minute's first request (its counter row is inserted, not updated) and a later one alike.
    for request_id in ("first", "later"):
        details = await refusal_details(
            metering.stub.Reserve(
                pb.ReserveRequest(request_id=request_id, estimated_tokens=1_001), metadata=who
            )
        )
        assert (details.code, details.reason, details.retry_info) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "ESTIMATE_EXCEEDS_LIMIT",
            None,
        ), details
        assert details.quota_failure is not None
        assert [v.subject for v in details.quota_failure.violations] == ["api_key:k1"]
        assert details.error_info is not None and details.error_info.metadata["scope"] == "api_key:k1"
        if request_id == "first":
            await metering.stub.Reserve(
                pb.ReserveRequest(request_id="small", estimated_tokens=10), metadata=who
            )
