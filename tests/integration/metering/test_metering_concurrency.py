"""Budgets and rate limits hold across replicas: two metering servers on one database, calls in parallel."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import grpc
import grpc.aio
import pytest
from sqlalchemy import text

from parapet.auth.v1 import tenant_policy_pb2 as tp
from parapet.kit.database import Database
from parapet.kit.errors import error_details
from parapet.kit.testing import TestKeys, running
from parapet.metering.v1 import metering_service_pb2 as pb
from parapet.metering.v1 import metering_service_pb2_grpc
from parapet.usage.v1 import token_usage_pb2
from services.metering.app import APP
from tests.integration.metering.metering_support import (
    caller,
    metering_settings,
    new_tenant,
    usd,
    write_policies,
)

LIMIT_MICROS = 20_000


@pytest.fixture
async def replicas(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str
) -> AsyncIterator[tuple[list[metering_service_pb2_grpc.MeteringServiceStub], Path]]:
    """Two metering servers (two create_server instances) sharing one database and one policy file."""
    policy_file = tmp_path / "policies.json"
    policy_file.write_text("{}")
    async with AsyncExitStack() as stack:
        stubs = []
        for _ in range(2):
            settings = metering_settings(tmp_path, keys, database_url, nats_url, policy_file)
            _server, port = await stack.enter_async_context(running(APP, settings))
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
            stubs.append(metering_service_pb2_grpc.MeteringServiceStub(channel))
        yield stubs, policy_file


async def _wait_for_minute_start() -> None:
    """Rate tests count within one UTC minute; start early in a minute so all calls land in it."""
    second = datetime.now(UTC).second
    if second >= 45:
        await asyncio.sleep(61 - second)


async def test_200_concurrent_reservations_on_two_replicas_never_overspend(
    replicas: tuple[list[metering_service_pb2_grpc.MeteringServiceStub], Path],
    keys: TestKeys,
    database_url: str,
) -> None:
    stubs, policy_file = replicas
    tenant = new_tenant()
    budget = tp.Budget(
        budget_id="month",
        scope=tp.BUDGET_SCOPE_TENANT,
        window=tp.BUDGET_WINDOW_MONTH,
        cost_limit=usd(LIMIT_MICROS),
    )
    write_policies(policy_file, {tenant: tp.TenantPolicy(budgets=[budget])})
    rng = random.Random(8)
    estimates = [rng.randint(100, 400) for _ in range(200)]
    who = caller(keys, tenant)

    async def reserve(i: int) -> tuple[int, pb.ReserveResponse | None]:
        stub = stubs[i % 2]
        try:
            answer = await stub.Reserve(
                pb.ReserveRequest(
                    request_id=f"req-{i}", estimated_tokens=10, estimated_cost=usd(estimates[i])
                ),
                metadata=who,
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
            assert error_details(error).reason == "BUDGET_EXCEEDED"
            return i, None
        return i, answer

    results = await asyncio.gather(*(reserve(i) for i in range(200)))
    granted = [(i, r) for i, r in results if r is not None]
    held = sum(estimates[i] for i, _ in granted)
    assert 0 < len(granted) < 200  # the budget admits some, not all (5,000 average asks vs 20,000)
    assert held <= LIMIT_MICROS  # holds never exceed the limit, whatever the interleaving
    # Close to full: the smallest refused ask did not fit in what was left when it was tried.
    assert LIMIT_MICROS - held < 400

    # Settle every granted reservation at its actual cost (at most the estimate, as max_tokens bounds it).
    actual = {i: rng.randint(estimates[i] // 2, estimates[i]) for i, _ in granted}
    await asyncio.gather(
        *(
            stubs[i % 2].Settle(
                pb.SettleRequest(
                    reservation_id=r.reservation.reservation_id,
                    request_id=f"req-{i}",
                    model="m",
                    usage=token_usage_pb2.TokenUsage(prompt_tokens=5, completion_tokens=5),
                    cost=usd(actual[i]),
                ),
                metadata=who,
            )
            for i, r in granted
        )
    )
    database = Database(database_url, "metering")
    try:
        async with database.session() as session:
            used, reserved = (
                await session.execute(
                    text("SELECT used, reserved FROM budget_counters WHERE tenant_id = :t"), {"t": tenant}
                )
            ).one()
            ledger_sum = (
                await session.execute(
                    text("SELECT sum(cost_micros) FROM usage_ledger WHERE tenant_id = :t"), {"t": tenant}
                )
            ).scalar_one()
    finally:
        await database.close()
    # Holds became the actual spend, exactly: counters, ledger and what was settled agree to the micro.
    assert reserved == 0 and used == ledger_sum == sum(actual.values()) <= LIMIT_MICROS


async def test_rate_limits_hold_across_replicas(
    replicas: tuple[list[metering_service_pb2_grpc.MeteringServiceStub], Path], keys: TestKeys
) -> None:
    stubs, policy_file = replicas
    tenant = new_tenant()
    limits = [
        tp.RateLimit(scope=tp.RATE_LIMIT_SCOPE_TENANT, requests_per_minute=30),
        tp.RateLimit(scope=tp.RATE_LIMIT_SCOPE_API_KEY, tokens_per_minute=1_000),
    ]
    write_policies(policy_file, {tenant: tp.TenantPolicy(rate_limits=limits)})
    await _wait_for_minute_start()

    async def attempt(i: int, who: tuple[tuple[str, str], ...], tokens: int) -> grpc.aio.AioRpcError | None:
        try:
            await stubs[i % 2].Reserve(
                pb.ReserveRequest(request_id=f"q-{i}", estimated_tokens=tokens), metadata=who
            )
        except grpc.aio.AioRpcError as error:
            return error
        return None

    # Key k1: 100 tokens a request, 1,000 tokens/min -> 10 pass, across both replicas.
    k1 = caller(keys, tenant, "alice", api_key_id="k1")
    outcomes = await asyncio.gather(*(attempt(i, k1, 100) for i in range(25)))
    refused = [e for e in outcomes if e is not None]
    assert len(outcomes) - len(refused) == 10
    for error in refused:
        details = error_details(error)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and details.reason == "RATE_LIMITED"
        assert (
            details.quota_failure is not None and details.quota_failure.violations[0].subject == "api_key:k1"
        )
        assert details.retry_after is not None and 0 < details.retry_after <= 60

    # The tenant's 30 requests/min: 10 used by k1, so 20 more pass out of 40 (no key: only the tenant limit).
    bob = caller(keys, tenant, "bob")
    outcomes = await asyncio.gather(*(attempt(100 + i, bob, 1) for i in range(40)))
    assert sum(1 for e in outcomes if e is None) == 20
    subjects = {_subject(e) for e in outcomes if e is not None}
    assert subjects == {f"tenant:{tenant}"}


def _subject(error: grpc.aio.AioRpcError) -> str:
    quota = error_details(error).quota_failure
    assert quota is not None
    return str(quota.violations[0].subject)


async def test_every_budget_kind_at_once_holds_under_concurrency_on_two_replicas(
    replicas: tuple[list[metering_service_pb2_grpc.MeteringServiceStub], Path],
    keys: TestKeys,
    database_url: str,
) -> None:
    """Tenant, user and API key budgets, each in tokens and in cost, day and month windows, all applying to
    every request: no counter ever holds more than its limit, and after settling (some above their estimate)
    each counter equals the sum of what was settled for its subject (as the test sent it), nothing left held."""
    stubs, policy_file = replicas
    tenant = new_tenant()
    limits = {
        "tenant-tokens": (tp.BUDGET_SCOPE_TENANT, "tokens", 6_000),
        "tenant-cost": (tp.BUDGET_SCOPE_TENANT, "micros", 9_000),
        "user-tokens": (tp.BUDGET_SCOPE_USER, "tokens", 2_500),
        "user-cost": (tp.BUDGET_SCOPE_USER, "micros", 4_000),
        "key-tokens": (tp.BUDGET_SCOPE_API_KEY, "tokens", 1_500),
        "key-cost": (tp.BUDGET_SCOPE_API_KEY, "micros", 2_000),
    }
    budgets = [
        tp.Budget(
            budget_id=budget_id,
            scope=scope,
            window=tp.BUDGET_WINDOW_DAY if budget_id.endswith("tokens") else tp.BUDGET_WINDOW_MONTH,
            **({"token_limit": limit} if unit == "tokens" else {"cost_limit": usd(limit)}),
        )
        for budget_id, (scope, unit, limit) in limits.items()
    ]
    write_policies(policy_file, {tenant: tp.TenantPolicy(budgets=budgets)})
    # Three users, each with two keys and without one: every request is under the tenant's and its user's
    # budgets, and those with a key under the key's too.
    callers = [
        (user, key, caller(keys, tenant, user, api_key_id=key))
        for user in ("u1", "u2", "u3")
        for key in (f"{user}-k1", f"{user}-k2", "")
    ]
    rng = random.Random(11)
    asks = [(rng.randint(20, 120), rng.randint(30, 160)) for _ in range(270)]

    async def reserve(i: int) -> pb.ReserveResponse | None:
        _user, _key, who = callers[i % len(callers)]
        tokens, micros = asks[i]
        try:
            answer: pb.ReserveResponse = await stubs[i % 2].Reserve(
                pb.ReserveRequest(request_id=f"all-{i}", estimated_tokens=tokens, estimated_cost=usd(micros)),
                metadata=who,
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
            assert error_details(error).reason == "BUDGET_EXCEEDED"
            return None
        return answer

    answers = await asyncio.gather(*(reserve(i) for i in range(len(asks))))
    granted = [i for i, answer in enumerate(answers) if answer is not None]
    assert 0 < len(granted) < len(asks)

    def subjects(i: int) -> dict[str, str]:
        user, key, _who = callers[i % len(callers)]
        found = {"tenant-tokens": "tenant", "tenant-cost": "tenant", "user-tokens": user, "user-cost": user}
        if key:
            found |= {"key-tokens": key, "key-cost": key}
        return found

    def totals(figures: dict[int, tuple[int, int]]) -> dict[tuple[str, str], int]:
        summed: dict[tuple[str, str], int] = {}
        for i, (tokens, micros) in figures.items():
            for budget_id, subject in subjects(i).items():
                amount = tokens if limits[budget_id][1] == "tokens" else micros
                summed[(budget_id, subject)] = summed.get((budget_id, subject), 0) + amount
        return summed

    held = totals({i: asks[i] for i in granted})
    for (budget_id, subject), amount in held.items():
        assert amount <= limits[budget_id][2], (budget_id, subject, amount)

    # Settle each: most below the estimate, some above it (the model ran longer than asked for).
    actual = {i: (asks[i][0] + rng.randint(-20, 10), asks[i][1] + rng.randint(-30, 15)) for i in granted}
    await asyncio.gather(
        *(
            stubs[(i + 1) % 2].Settle(
                pb.SettleRequest(
                    reservation_id=answer.reservation.reservation_id,
                    request_id=f"all-{i}",
                    usage=token_usage_pb2.TokenUsage(prompt_tokens=actual[i][0], completion_tokens=0),
                    cost=usd(actual[i][1]),
                ),
                metadata=callers[i % len(callers)][2],
            )
            for i, answer in enumerate(answers)
            if answer is not None
        )
    )
    database = Database(database_url, "metering")
    try:
        async with database.session() as session:
            rows = (
                await session.execute(
                    text(
                        "SELECT budget_id, scope_key, used, reserved FROM budget_counters WHERE tenant_id = :t"
                    ),
                    {"t": tenant},
                )
            ).all()
    finally:
        await database.close()
    counted = {
        (b, s.partition(":")[2] if not s.startswith("tenant:") else "tenant"): u for b, s, u, _r in rows
    }
    assert all(reserved == 0 for *_rest, reserved in rows)
    assert counted == totals(actual)
