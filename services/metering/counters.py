"""Budget and rate-limit counters: every check-and-hold is one SQL statement, atomic across replicas.

No counter is ever read into Python and written back: each statement checks the limit against the row's
latest committed version under its row lock (``INSERT ... ON CONFLICT DO UPDATE ... WHERE``), so any number
of metering replicas sharing the database never hold more than the limit. Rows are touched in a stable key
order (the callers sort), so concurrent transactions queue instead of deadlocking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.metering.limits import AppliedBudget, AppliedRateLimit, Unit


@dataclass(frozen=True)
class Hold:
    """Spend a reservation holds on one budget counter (stored in ``reservations.holds``)."""

    budget_id: str
    scope_key: str
    unit: Unit
    window_start: datetime
    amount: int

    def to_json(self) -> dict[str, Any]:
        return {
            "budget_id": self.budget_id,
            "scope_key": self.scope_key,
            "unit": self.unit,
            "window_start": self.window_start.isoformat(),
            "amount": self.amount,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Hold:
        return cls(
            raw["budget_id"],
            raw["scope_key"],
            raw["unit"],
            datetime.fromisoformat(raw["window_start"]),
            int(raw["amount"]),
        )


@dataclass(frozen=True)
class CounterState:
    budget_id: str
    scope_key: str
    unit: Unit
    window_start: datetime
    used: int
    reserved: int
    limit: int


def amount_for(unit: Unit, tokens: int, micros: int) -> int:
    return tokens if unit == "tokens" else micros


_HOLD_BUDGETS = text(
    """
    INSERT INTO budget_counters AS c (tenant_id, budget_id, scope_key, unit, window_start, limit_value, reserved)
    SELECT :tenant, w.budget_id, w.scope_key, w.unit, w.window_start, w.lim, w.amount
    FROM unnest(CAST(:budget_ids AS text[]), CAST(:scope_keys AS text[]), CAST(:units AS text[]),
                CAST(:windows AS timestamptz[]), CAST(:amounts AS bigint[]), CAST(:limits AS bigint[]))
         WITH ORDINALITY AS w(budget_id, scope_key, unit, window_start, amount, lim, n)
    WHERE w.amount <= w.lim
    ORDER BY w.n
    ON CONFLICT (tenant_id, budget_id, scope_key, unit, window_start) DO UPDATE
        SET reserved = c.reserved + excluded.reserved, limit_value = excluded.limit_value
        WHERE c.used + c.reserved + excluded.reserved <= excluded.limit_value
    RETURNING c.budget_id, c.scope_key, c.unit, c.window_start, c.used, c.reserved, c.limit_value
    """
)


async def hold_budgets(
    session: AsyncSession, tenant_id: str, budgets: Sequence[AppliedBudget], tokens: int, micros: int
) -> tuple[list[CounterState], list[AppliedBudget]]:
    """Hold the estimate on every budget that has room; returns (held counters, budgets without room).

    The caller rolls the transaction back when any budget lacks room, so a refused request holds nothing.
    """
    if not budgets:
        return [], []
    rows = (
        await session.execute(
            _HOLD_BUDGETS,
            {
                "tenant": tenant_id,
                "budget_ids": [b.budget_id for b in budgets],
                "scope_keys": [b.scope_key for b in budgets],
                "units": [b.unit for b in budgets],
                "windows": [b.window_start for b in budgets],
                "amounts": [amount_for(b.unit, tokens, micros) for b in budgets],
                "limits": [b.limit for b in budgets],
            },
        )
    ).all()
    held = [CounterState(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]
    keys = {(c.budget_id, c.scope_key, c.unit, c.window_start) for c in held}
    return held, [b for b in budgets if b.key not in keys]


_HOLD_RATES = text(
    """
    INSERT INTO rate_counters AS c
        (tenant_id, scope_key, window_start, requests, tokens, rpm, tpm, carry_requests, carry_tokens)
    SELECT :tenant, w.scope_key, :current, 1, :tokens, w.rpm, w.tpm,
           floor(coalesce(p.requests, 0) * :weight), floor(coalesce(p.tokens, 0) * :weight)
    FROM unnest(CAST(:scope_keys AS text[]), CAST(:rpms AS bigint[]), CAST(:tpms AS bigint[]))
         WITH ORDINALITY AS w(scope_key, rpm, tpm, n)
    LEFT JOIN rate_counters p
        ON p.tenant_id = :tenant AND p.scope_key = w.scope_key AND p.window_start = :previous
    ORDER BY w.n
    ON CONFLICT (tenant_id, scope_key, window_start) DO UPDATE
        SET requests = c.requests + 1, tokens = c.tokens + excluded.tokens, rpm = excluded.rpm,
            tpm = excluded.tpm, carry_requests = excluded.carry_requests, carry_tokens = excluded.carry_tokens
        WHERE (excluded.rpm = 0 OR c.requests + 1 + excluded.carry_requests <= excluded.rpm)
          AND (excluded.tpm = 0 OR c.tokens + excluded.tokens + excluded.carry_tokens <= excluded.tpm)
    RETURNING c.scope_key, c.requests, c.tokens, c.carry_requests, c.carry_tokens
    """
)


async def hold_rates(
    session: AsyncSession, tenant_id: str, limits: Sequence[AppliedRateLimit], tokens: int, now: datetime
) -> list[AppliedRateLimit]:
    """Count one request and ``tokens`` against each limit's sliding minute; returns the limits refused.

    Sliding window = this minute's count + the previous minute's count weighted by the share of it still
    inside the last 60 s (the usual approximation; exact for evenly spread traffic). A first request of a
    minute is inserted unconditionally, then refused here if it alone breaks the limit.
    """
    if not limits:
        return []
    current = now.replace(second=0, microsecond=0)
    weight = 1.0 - (now - current).total_seconds() / 60.0
    rows = (
        await session.execute(
            _HOLD_RATES,
            {
                "tenant": tenant_id,
                "current": current,
                "previous": current - timedelta(minutes=1),
                "tokens": tokens,
                "weight": weight,
                "scope_keys": [limit.scope_key for limit in limits],
                "rpms": [limit.requests_per_minute for limit in limits],
                "tpms": [limit.tokens_per_minute for limit in limits],
            },
        )
    ).all()
    by_key = {row[0]: row for row in rows}
    refused: list[AppliedRateLimit] = []
    for limit in limits:
        row = by_key.get(limit.scope_key)
        if row is None:
            refused.append(limit)
            continue
        _, requests, counted_tokens, carry_requests, carry_tokens = row
        if (limit.requests_per_minute and requests + carry_requests > limit.requests_per_minute) or (
            limit.tokens_per_minute and counted_tokens + carry_tokens > limit.tokens_per_minute
        ):
            refused.append(limit)  # the minute's first request alone exceeds the limit
    return refused


def rate_retry_after(now: datetime) -> float:
    """Seconds until the current minute ends: the earliest time the window's count can drop."""
    start = now.replace(second=0, microsecond=0)
    return max(0.001, math.ceil(((start + timedelta(minutes=1)) - now).total_seconds() * 1000) / 1000)


_MOVE = text(
    """
    UPDATE budget_counters AS c
    SET reserved = c.reserved - h.held, used = c.used + h.spent
    FROM unnest(CAST(:budget_ids AS text[]), CAST(:scope_keys AS text[]), CAST(:units AS text[]),
                CAST(:windows AS timestamptz[]), CAST(:held AS bigint[]), CAST(:spent AS bigint[]))
         AS h(budget_id, scope_key, unit, window_start, held, spent)
    WHERE c.tenant_id = :tenant AND c.budget_id = h.budget_id AND c.scope_key = h.scope_key
      AND c.unit = h.unit AND c.window_start = h.window_start
    """
)


async def move_holds(
    session: AsyncSession,
    tenant_id: str,
    holds: Sequence[Hold],
    *,
    release: bool,
    spent_tokens: int,
    spent_micros: int,
) -> None:
    """Free the holds (when ``release``) and add the actual spend to the same counters (settle)."""
    ordered = sorted(holds, key=lambda h: (h.budget_id, h.scope_key, h.unit, h.window_start))
    if not ordered:
        return
    await session.execute(
        _MOVE,
        {
            "tenant": tenant_id,
            "budget_ids": [h.budget_id for h in ordered],
            "scope_keys": [h.scope_key for h in ordered],
            "units": [h.unit for h in ordered],
            "windows": [h.window_start for h in ordered],
            "held": [h.amount if release else 0 for h in ordered],
            "spent": [amount_for(h.unit, spent_tokens, spent_micros) for h in ordered],
        },
    )


_CHARGE = text(
    """
    INSERT INTO budget_counters AS c (tenant_id, budget_id, scope_key, unit, window_start, limit_value, used)
    SELECT :tenant, w.budget_id, w.scope_key, w.unit, w.window_start, w.lim, w.amount
    FROM unnest(CAST(:budget_ids AS text[]), CAST(:scope_keys AS text[]), CAST(:units AS text[]),
                CAST(:windows AS timestamptz[]), CAST(:amounts AS bigint[]), CAST(:limits AS bigint[]))
         WITH ORDINALITY AS w(budget_id, scope_key, unit, window_start, amount, lim, n)
    ORDER BY w.n
    ON CONFLICT (tenant_id, budget_id, scope_key, unit, window_start) DO UPDATE
        SET used = c.used + excluded.used
    """
)


async def charge(
    session: AsyncSession, tenant_id: str, budgets: Sequence[AppliedBudget], tokens: int, micros: int
) -> None:
    """Add spend that ran without a reservation: no limit check, the spend already happened."""
    if not budgets:
        return
    await session.execute(
        _CHARGE,
        {
            "tenant": tenant_id,
            "budget_ids": [b.budget_id for b in budgets],
            "scope_keys": [b.scope_key for b in budgets],
            "units": [b.unit for b in budgets],
            "windows": [b.window_start for b in budgets],
            "amounts": [amount_for(b.unit, tokens, micros) for b in budgets],
            "limits": [b.limit for b in budgets],
        },
    )


async def counter_states(
    session: AsyncSession, tenant_id: str, budgets: Sequence[AppliedBudget]
) -> dict[tuple[str, str, str, datetime], CounterState]:
    if not budgets:
        return {}
    rows = (
        await session.execute(
            text(
                """
                SELECT c.budget_id, c.scope_key, c.unit, c.window_start, c.used, c.reserved, c.limit_value
                FROM budget_counters c
                JOIN unnest(CAST(:budget_ids AS text[]), CAST(:scope_keys AS text[]), CAST(:units AS text[]),
                            CAST(:windows AS timestamptz[])) AS w(budget_id, scope_key, unit, window_start)
                  ON c.budget_id = w.budget_id AND c.scope_key = w.scope_key AND c.unit = w.unit
                 AND c.window_start = w.window_start
                WHERE c.tenant_id = :tenant
                """
            ),
            {
                "tenant": tenant_id,
                "budget_ids": [b.budget_id for b in budgets],
                "scope_keys": [b.scope_key for b in budgets],
                "units": [b.unit for b in budgets],
                "windows": [b.window_start for b in budgets],
            },
        )
    ).all()
    states = [CounterState(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]
    return {(s.budget_id, s.scope_key, s.unit, s.window_start): s for s in states}
