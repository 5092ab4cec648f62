"""Reserve as ONE SQL statement: insert the reservation, count the rate limits, hold the budgets.

Every check happens inside PostgreSQL under the counter rows' locks (``INSERT ... ON CONFLICT DO UPDATE ...
WHERE`` re-evaluates the limit against the latest committed row), so replicas never overspend. When any
limit refuses, the statement calls ``reserve_refused()``, which raises: the statement, its own transaction
in autocommit mode, is rolled back whole and nothing is held. One statement, one round trip.
The statement runs on the raw psycopg connection: the ORM session's per-statement overhead was most of
Reserve's CPU time.

The transaction commits asynchronously (``set_config('synchronous_commit', 'off', true)``, this transaction
only): the WAL flush was most of Reserve's latency (about 3 ms of 4 on the benchmark machine). A reservation
is a short-lived hold, not a fact: a database crash may forget the last few hundred milliseconds of holds,
which at worst admits those requests' estimates once more, and their Settle still records the usage (an
unknown reservation settles like one made without a reservation). Settle, which writes the ledger and the
outbox, keeps synchronous commit: usage is never lost.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import AsyncConnection

from services.metering.counters import CounterState, Hold, amount_for, key_arrays
from services.metering.limits import AppliedBudget, AppliedRateLimit

REFUSED = "PM001"  # SQLSTATE of reserve_refused() (migration 0002): a limit refused, nothing was written

RESERVE = """
WITH res AS (
    INSERT INTO reservations (reservation_id, tenant_id, request_id, user_id, api_key_id, state,
        reserved_tokens, reserved_micros, currency_code, holds, create_time, expire_time)
    VALUES (%(id)s, %(tenant)s, %(request)s, %(user)s, %(key)s, 'active', %(tokens)s, %(micros)s,
        %(currency)s, CAST(%(holds)s AS jsonb), %(now)s, %(expire)s)
    ON CONFLICT (tenant_id, request_id) DO NOTHING
    RETURNING reservation_id, request_id, state, reserved_tokens, reserved_micros, currency_code,
        create_time, expire_time, end_time, holds
), rates AS (
    INSERT INTO rate_counters AS c
        (tenant_id, scope_key, window_start, requests, tokens, rpm, tpm, carry_requests, carry_tokens)
    SELECT %(tenant)s, w.scope_key, %(minute)s, 1, %(tokens)s, w.rpm, w.tpm,
           floor(coalesce(p.requests, 0) * %(weight)s), floor(coalesce(p.tokens, 0) * %(weight)s)
    FROM unnest(CAST(%(rate_keys)s AS text[]), CAST(%(rpms)s AS bigint[]), CAST(%(tpms)s AS bigint[]))
         WITH ORDINALITY AS w(scope_key, rpm, tpm, n)
    LEFT JOIN rate_counters p
        ON p.tenant_id = %(tenant)s AND p.scope_key = w.scope_key AND p.window_start = %(previous_minute)s
    WHERE EXISTS (SELECT 1 FROM res)
    ORDER BY w.n
    ON CONFLICT (tenant_id, scope_key, window_start) DO UPDATE
        SET requests = c.requests + 1, tokens = c.tokens + excluded.tokens, rpm = excluded.rpm,
            tpm = excluded.tpm, carry_requests = excluded.carry_requests, carry_tokens = excluded.carry_tokens
        WHERE (excluded.rpm = 0 OR c.requests + 1 + excluded.carry_requests <= excluded.rpm)
          AND (excluded.tpm = 0 OR c.tokens + excluded.tokens + excluded.carry_tokens <= excluded.tpm)
    RETURNING c.scope_key, c.requests + c.carry_requests AS requests, c.tokens + c.carry_tokens AS tokens,
        c.rpm, c.tpm
), held AS (
    INSERT INTO budget_counters AS c
        (tenant_id, budget_id, scope_key, unit, window_start, limit_value, reserved)
    SELECT %(tenant)s, w.budget_id, w.scope_key, w.unit, w.window_start, w.lim, w.amount
    FROM unnest(CAST(%(budget_ids)s AS text[]), CAST(%(scope_keys)s AS text[]), CAST(%(units)s AS text[]),
                CAST(%(windows)s AS timestamptz[]), CAST(%(amounts)s AS bigint[]), CAST(%(limits)s AS bigint[]))
         WITH ORDINALITY AS w(budget_id, scope_key, unit, window_start, amount, lim, n)
    WHERE w.amount <= w.lim AND EXISTS (SELECT 1 FROM res)
    ORDER BY w.n
    ON CONFLICT (tenant_id, budget_id, scope_key, unit, window_start) DO UPDATE
        SET reserved = c.reserved + excluded.reserved, limit_value = excluded.limit_value
        WHERE c.used + c.reserved + excluded.reserved <= excluded.limit_value
    RETURNING c.budget_id, c.scope_key, c.unit, c.used, c.reserved, c.limit_value
), rate_json AS (SELECT coalesce(jsonb_agg(jsonb_build_array(scope_key, requests, tokens)), '[]') AS j FROM rates),
held_json AS (
    SELECT coalesce(jsonb_agg(jsonb_build_array(budget_id, scope_key, unit, used, reserved, limit_value)), '[]') AS j
    FROM held
)
SELECT r.reservation_id, r.request_id, r.state, r.reserved_tokens, r.reserved_micros, r.currency_code,
       r.create_time, r.expire_time, r.end_time, r.holds,
       (SELECT j FROM rate_json), (SELECT j FROM held_json),
       set_config('synchronous_commit', 'off', true),
       -- A limit refused: no row back from its conditional upsert, or a minute's first request over it alone.
       CASE WHEN r.reservation_id IS NOT NULL AND (
                (SELECT count(*) FROM rates
                 WHERE NOT ((rpm > 0 AND requests > rpm) OR (tpm > 0 AND tokens > tpm)))
                    < cardinality(CAST(%(rate_keys)s AS text[]))
             OR (SELECT count(*) FROM held) < cardinality(CAST(%(budget_ids)s AS text[])))
            THEN reserve_refused((SELECT j FROM rate_json), (SELECT j FROM held_json)) END
FROM (SELECT 1) AS one LEFT JOIN res r ON true
"""


@dataclass(frozen=True)
class ReserveOutcome:
    row: tuple[Any, ...] | None  # the new reservation's columns; None when request_id was already reserved
    held: list[CounterState]
    refused_budgets: list[AppliedBudget]
    refused_rates: list[AppliedRateLimit]


async def execute(
    connection: AsyncConnection[Any],
    *,
    reservation_id: str,
    tenant: str,
    request_id: str,
    user: str,
    api_key: str,
    tokens: int,
    micros: int,
    currency: str,
    now: datetime,
    ttl: timedelta,
    budgets: Sequence[AppliedBudget],
    rate_limits: Sequence[AppliedRateLimit],
) -> ReserveOutcome:
    holds = [
        Hold(b.budget_id, b.scope_key, b.unit, b.window_start, amount_for(b.unit, tokens, micros))
        for b in budgets
    ]
    minute = now.replace(second=0, microsecond=0)
    params = {
        "id": reservation_id,
        "tenant": tenant,
        "request": request_id,
        "user": user,
        "key": api_key,
        "tokens": tokens,
        "micros": micros,
        "currency": currency,
        "holds": json.dumps([h.to_json() for h in holds]),
        "now": now,
        "expire": now + ttl,
        "minute": minute,
        "previous_minute": minute - timedelta(minutes=1),
        # Sliding window: the previous minute counts with the share of it still inside the last 60 s.
        "weight": 1.0 - (now - minute).total_seconds() / 60.0,
        "rate_keys": [r.scope_key for r in rate_limits],
        "rpms": [r.requests_per_minute for r in rate_limits],
        "tpms": [r.tokens_per_minute for r in rate_limits],
        **key_arrays(budgets),
        "amounts": [h.amount for h in holds],
        "limits": [b.limit for b in budgets],
    }
    try:
        cursor = await connection.execute(RESERVE, params)
        result = await cursor.fetchone()
    except psycopg.Error as error:
        if error.sqlstate != REFUSED or error.diag.message_detail is None:
            raise
        rates_json, held_json = json.loads(error.diag.message_detail)
        return _interpret(None, rates_json, held_json, budgets, rate_limits, refused=True)
    assert result is not None
    if result[0] is None:
        return ReserveOutcome(None, [], [], [])
    return _interpret(tuple(result[:10]), result[10], result[11], budgets, rate_limits, refused=False)


def _interpret(
    row: tuple[Any, ...] | None,
    rates_json: list[list[Any]],
    held_json: list[list[Any]],
    budgets: Sequence[AppliedBudget],
    rate_limits: Sequence[AppliedRateLimit],
    *,
    refused: bool,
) -> ReserveOutcome:
    """Which limits refused, from what the statement's upserts returned (the same rule the SQL applied)."""
    rates = {key: (requests, counted) for key, requests, counted in rates_json}
    refused_rates = []
    for limit in rate_limits:
        seen = rates.get(limit.scope_key)
        # No row back: the conditional update refused. A row back can still be over the limit when it
        # was this minute's first request (inserted unconditionally) and alone exceeds it.
        if seen is None or (
            (limit.requests_per_minute and seen[0] > limit.requests_per_minute)
            or (limit.tokens_per_minute and seen[1] > limit.tokens_per_minute)
        ):
            refused_rates.append(limit)
    by_budget = {(b, s, u): (used, reserved, lim) for b, s, u, used, reserved, lim in held_json}
    held, refused_budgets = [], []
    for budget in budgets:
        state = by_budget.get((budget.budget_id, budget.scope_key, budget.unit))
        if state is None:
            refused_budgets.append(budget)
        else:
            held.append(
                CounterState(budget.budget_id, budget.scope_key, budget.unit, budget.window_start, *state)
            )
    assert refused == bool(refused_rates or refused_budgets), "SQL and Python disagree on a refusal"
    return ReserveOutcome(row, held, refused_budgets, refused_rates)
