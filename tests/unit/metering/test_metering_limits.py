"""Which budgets and rate limits apply to a caller, and their UTC windows."""

from __future__ import annotations

from datetime import UTC, datetime

from parapet.auth.v1 import tenant_policy_pb2 as tp
from parapet.kit.identity import Principal
from parapet.usage.v1 import money_pb2
from services.metering.limits import applicable_budgets, applicable_rate_limits, budget_window, minute_window

ALICE = Principal(tenant_id="acme", subject="alice", api_key_id="k1")
MOMENT = datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC)


def test_windows_are_utc_calendar_day_month_and_minute() -> None:
    assert budget_window(tp.BUDGET_WINDOW_DAY, MOMENT) == (
        datetime(2026, 12, 31, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert budget_window(tp.BUDGET_WINDOW_MONTH, MOMENT) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert minute_window(MOMENT)[0] == datetime(2026, 12, 31, 23, 59, tzinfo=UTC)


def test_budget_scopes_map_to_the_callers_subjects() -> None:
    policy = tp.TenantPolicy(
        budgets=[
            tp.Budget(
                budget_id="t", scope=tp.BUDGET_SCOPE_TENANT, window=tp.BUDGET_WINDOW_DAY, token_limit=10
            ),
            tp.Budget(budget_id="u", scope=tp.BUDGET_SCOPE_USER, window=tp.BUDGET_WINDOW_DAY, token_limit=10),
            tp.Budget(
                budget_id="bob",
                scope=tp.BUDGET_SCOPE_USER,
                scope_id="bob",
                window=tp.BUDGET_WINDOW_DAY,
                token_limit=1,
            ),
            tp.Budget(
                budget_id="k",
                scope=tp.BUDGET_SCOPE_API_KEY,
                window=tp.BUDGET_WINDOW_MONTH,
                cost_limit=money_pb2.Money(currency_code="USD", amount_micros=5),
            ),
            tp.Budget(budget_id="no-window", scope=tp.BUDGET_SCOPE_TENANT, token_limit=1),
            tp.Budget(budget_id="no-limit", scope=tp.BUDGET_SCOPE_TENANT, window=tp.BUDGET_WINDOW_DAY),
        ]
    )
    applied = {(b.budget_id, b.scope_key, b.unit, b.limit) for b in applicable_budgets(policy, ALICE, MOMENT)}
    assert applied == {
        ("t", "tenant:acme", "tokens", 10),
        ("u", "user:alice", "tokens", 10),
        ("k", "api_key:k1", "micros", 5),
    }
    # A cost budget keeps its own currency (metering refuses one that is not the deployment's).
    currencies = {b.budget_id: b.currency_code for b in applicable_budgets(policy, ALICE, MOMENT)}
    assert currencies == {"t": "", "u": "", "k": "USD"}
    without_key = Principal(tenant_id="acme", subject="alice")
    assert "k" not in {b.budget_id for b in applicable_budgets(policy, without_key, MOMENT)}


def test_rate_limit_scopes_use_their_own_enum_numbers_and_merge_to_the_strictest() -> None:
    # RateLimitScope numbers API_KEY = 2 and USER = 3, the reverse of BudgetScope: each maps by its own enum.
    policy = tp.TenantPolicy(
        rate_limits=[
            tp.RateLimit(scope=tp.RATE_LIMIT_SCOPE_API_KEY, requests_per_minute=5),
            tp.RateLimit(scope=tp.RATE_LIMIT_SCOPE_USER, tokens_per_minute=100),
            tp.RateLimit(scope=tp.RATE_LIMIT_SCOPE_TENANT, requests_per_minute=50, tokens_per_minute=0),
            tp.RateLimit(scope=tp.RATE_LIMIT_SCOPE_TENANT, requests_per_minute=0, tokens_per_minute=900),
            tp.RateLimit(scope=tp.RATE_LIMIT_SCOPE_TENANT, requests_per_minute=40),
        ]
    )
    applied = {
        (r.scope_key, r.requests_per_minute, r.tokens_per_minute)
        for r in applicable_rate_limits(policy, ALICE)
    }
    assert applied == {("api_key:k1", 5, 0), ("user:alice", 0, 100), ("tenant:acme", 40, 900)}
