"""Budget counters after a reservation: freeing holds, charging actual spend, reading current state.

No counter is ever read into Python and written back: every change is a relative UPDATE/upsert
(``used = used + x``) under the row's lock, so replicas sharing the database never lose an update. Rows are
touched in a stable key order (the callers sort), so concurrent transactions queue instead of deadlocking.
The check-and-hold itself is in reserve_sql.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.metering.limits import AppliedBudget, Unit


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


class CounterKeyed(Protocol):
    """Anything naming one budget counter (an AppliedBudget, a Hold)."""

    @property
    def budget_id(self) -> str: ...
    @property
    def scope_key(self) -> str: ...
    @property
    def unit(self) -> Unit: ...
    @property
    def window_start(self) -> datetime: ...


def key_arrays(items: Sequence[CounterKeyed]) -> dict[str, list[Any]]:
    """The counter keys of ``items`` as the parallel arrays the statements unnest."""
    return {
        "budget_ids": [i.budget_id for i in items],
        "scope_keys": [i.scope_key for i in items],
        "units": [i.unit for i in items],
        "windows": [i.window_start for i in items],
    }


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
            **key_arrays(ordered),
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
            **key_arrays(budgets),
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
                **key_arrays(budgets),
            },
        )
    ).all()
    states = [CounterState(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]
    return {(s.budget_id, s.scope_key, s.unit, s.window_start): s for s in states}
