"""Which budgets and rate limits of a tenant policy apply to a caller, and their current windows (UTC)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from parapet.auth.v1 import tenant_policy_pb2
from parapet.kit.identity import Principal

Unit = Literal["tokens", "micros"]
_DAY = tenant_policy_pb2.BUDGET_WINDOW_DAY
_MONTH = tenant_policy_pb2.BUDGET_WINDOW_MONTH


def day_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(moment: datetime) -> datetime:
    return day_start(moment).replace(day=1)


def next_month(start: datetime) -> datetime:
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


def budget_window(window: int, moment: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the calendar window of ``moment`` (day or month, UTC)."""
    if window == _MONTH:
        start = month_start(moment)
        return start, next_month(start)
    start = day_start(moment)
    return start, start + timedelta(days=1)


def minute_window(moment: datetime) -> tuple[datetime, datetime]:
    start = moment.astimezone(UTC).replace(second=0, microsecond=0)
    return start, start + timedelta(minutes=1)


@dataclass(frozen=True)
class AppliedBudget:
    """One budget counter a request is charged against: budget x subject x window."""

    budget_id: str
    scope_key: str  # QuotaFailure subject: "tenant:<id>", "user:<id>" or "api_key:<id>"
    unit: Unit
    limit: int
    soft_limit_percent: int
    window_start: datetime
    window_end: datetime
    currency_code: str = ""  # a cost budget's own currency, as the policy says; "" for token budgets

    @property
    def key(self) -> tuple[str, str, str, datetime]:
        return (self.budget_id, self.scope_key, self.unit, self.window_start)

    @property
    def scope_id(self) -> str:
        """Whom it applies to as ``BudgetStatus.scope_id`` states it: "tenant", or the user or API key id."""
        kind, _, subject = self.scope_key.partition(":")
        return "tenant" if kind == "tenant" else subject

    def foreign_to(self, currency_code: str) -> bool:
        """A cost budget in another currency than ``currency_code`` (the deployment's prices, the only one
        metering measures spend in): its limit cannot be compared with any spend metering records."""
        return self.unit == "micros" and self.currency_code != currency_code


@dataclass(frozen=True)
class AppliedRateLimit:
    scope_key: str
    requests_per_minute: int  # 0 = unlimited
    tokens_per_minute: int  # 0 = unlimited


# BudgetScope and RateLimitScope number their values differently: map each to one kind of subject.
_BUDGET_SCOPES = {
    tenant_policy_pb2.BUDGET_SCOPE_TENANT: "tenant",
    tenant_policy_pb2.BUDGET_SCOPE_USER: "user",
    tenant_policy_pb2.BUDGET_SCOPE_API_KEY: "api_key",
}
_RATE_SCOPES = {
    tenant_policy_pb2.RATE_LIMIT_SCOPE_TENANT: "tenant",
    tenant_policy_pb2.RATE_LIMIT_SCOPE_USER: "user",
    tenant_policy_pb2.RATE_LIMIT_SCOPE_API_KEY: "api_key",
}


def _scope_key(kind: str | None, scope_id: str, principal: Principal) -> str | None:
    """The subject a budget or rate limit of ``kind`` charges for this caller; None when it does not apply."""
    if kind == "tenant":
        return f"tenant:{principal.tenant_id}"
    if kind == "user":
        if scope_id and scope_id != principal.subject:
            return None
        return f"user:{principal.subject}"
    if kind == "api_key":
        if not principal.api_key_id or (scope_id and scope_id != principal.api_key_id):
            return None
        return f"api_key:{principal.api_key_id}"
    return None


def applicable_budgets(
    policy: tenant_policy_pb2.TenantPolicy, principal: Principal, moment: datetime
) -> list[AppliedBudget]:
    """The caller's budgets in a stable order (the order rows are locked in, so replicas never deadlock)."""
    applied: dict[tuple[str, str, str, datetime], AppliedBudget] = {}
    for budget in policy.budgets:
        scope_key = _scope_key(_BUDGET_SCOPES.get(budget.scope), budget.scope_id, principal)
        if scope_key is None or budget.window not in (_DAY, _MONTH):
            continue
        kind = budget.WhichOneof("limit")
        currency = ""
        if kind == "token_limit":
            unit: Unit = "tokens"
            limit = budget.token_limit
        elif kind == "cost_limit":
            # The currency travels with the limit: the caller decides what a budget in another one means.
            unit, limit, currency = "micros", budget.cost_limit.amount_micros, budget.cost_limit.currency_code
        else:
            continue
        start, end = budget_window(budget.window, moment)
        item = AppliedBudget(
            budget.budget_id, scope_key, unit, limit, budget.soft_limit_percent, start, end, currency
        )
        applied[item.key] = item
    return [applied[key] for key in sorted(applied)]


def applicable_rate_limits(
    policy: tenant_policy_pb2.TenantPolicy, principal: Principal
) -> list[AppliedRateLimit]:
    """One limit per subject; several entries for one subject combine to the strictest of each figure."""
    merged: dict[str, AppliedRateLimit] = {}
    for limit in policy.rate_limits:
        scope_key = _scope_key(_RATE_SCOPES.get(limit.scope), "", principal)
        if scope_key is None or (limit.requests_per_minute <= 0 and limit.tokens_per_minute <= 0):
            continue
        previous = merged.get(scope_key)
        if previous is not None:
            limit_rpm = _strictest(previous.requests_per_minute, limit.requests_per_minute)
            limit_tpm = _strictest(previous.tokens_per_minute, limit.tokens_per_minute)
        else:
            limit_rpm, limit_tpm = max(0, limit.requests_per_minute), max(0, limit.tokens_per_minute)
        merged[scope_key] = AppliedRateLimit(scope_key, limit_rpm, limit_tpm)
    return [merged[key] for key in sorted(merged)]


def _strictest(a: int, b: int) -> int:
    """Of two limits where 0 = unlimited, the stricter."""
    positive = [value for value in (a, b) if value > 0]
    return min(positive) if positive else 0
