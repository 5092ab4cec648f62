"""Reserve, settle, release and expire: each one database transaction, safe on any number of replicas.

Idempotency lives in unique keys, not in Python checks: a reservation is unique per (tenant, request_id), a
ledger row too; state changes are conditional UPDATEs (``WHERE state = 'active'``), so a retried or racing call
changes nothing twice.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg.errors
import psycopg.pq
from google.rpc import error_details_pb2
from psycopg import AsyncConnection
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from parapet.kit import metrics
from parapet.kit.database import Database, engine_options
from parapet.kit.errors import FailedPrecondition, QuotaExceeded
from parapet.kit.identity import Principal
from services.metering import counters, reserve_sql
from services.metering.counters import CounterState, Hold
from services.metering.ledger import UsageRecord
from services.metering.limits import AppliedBudget, AppliedRateLimit

T = TypeVar("T")
_RETRYABLE = {"40P01", "40001"}  # deadlock detected, serialization failure: PostgreSQL asks for a retry


@dataclass(frozen=True)
class ReservationRow:
    reservation_id: str
    request_id: str
    state: str
    reserved_tokens: int
    reserved_micros: int
    currency_code: str
    create_time: datetime
    expire_time: datetime
    end_time: datetime | None
    holds: tuple[Hold, ...]


@dataclass(frozen=True)
class ReserveResult:
    reservation: ReservationRow
    held: tuple[CounterState, ...]  # counters after the hold (empty for a repeated request_id)


async def with_retry(
    database: Database, work: Callable[[AsyncSession], Awaitable[T]], attempts: int = 5
) -> T:
    """Run ``work`` in a transaction, again when PostgreSQL reports a deadlock or serialization failure."""
    for attempt in range(attempts):
        try:
            async with database.transaction() as session:
                return await work(session)
        except DBAPIError as error:
            code = getattr(error.orig, "sqlstate", None)
            if code not in _RETRYABLE or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.001 * (2**attempt))
    raise AssertionError("unreachable")


_SELECT = """
    SELECT reservation_id, request_id, state, reserved_tokens, reserved_micros, currency_code, create_time,
           expire_time, end_time, holds
    FROM reservations
"""


def row_from_columns(r: Sequence[Any]) -> ReservationRow:
    """A reservation from its columns in ``_SELECT``'s order (the statements' RETURNING lists)."""
    holds = r[9] if isinstance(r[9], list) else json.loads(r[9])
    return ReservationRow(
        str(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], tuple(Hold.from_json(h) for h in holds)
    )


def reserve_engine(database_url: str, schema: str) -> AsyncEngine:
    """Reserve's own connection pool: the service's engine settings without the pre-ping.

    The kit's engine pings every connection it hands out (one more round trip, as long as the statement
    itself); Reserve instead retries on a connection the database dropped (see :func:`reserve`), after
    replacing the pool whose connections all predate the drop (:func:`autocommit_connection`).
    """
    return create_async_engine(
        database_url, pool_size=10, max_overflow=10, **{**engine_options(schema), "pool_pre_ping": False}
    )


@asynccontextmanager
async def autocommit_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection[Any]]:
    """A pooled psycopg connection in autocommit mode (each statement its own transaction), restored after."""
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        driver: AsyncConnection[Any] = raw.driver_connection  # type: ignore[assignment]
        if driver.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            await driver.rollback()
        await driver.set_autocommit(True)
        try:
            yield driver
        except psycopg.Error:
            if driver.broken or driver.closed:
                raw.invalidate()  # the database dropped it: never hand it out again
                # So it dropped every connection pooled before (a restart, a failover): without a pre-ping
                # the pool would hand those out one by one, more of them than Reserve has retries, and the
                # first Reserves after a restart failed UNAVAILABLE. A new pool connects afresh; connections
                # checked out meanwhile are closed when returned.
                await engine.dispose()
            raise
        finally:
            if raw.is_valid:
                try:
                    await driver.set_autocommit(False)
                except psycopg.Error:
                    raw.invalidate()  # a broken connection must not go back to the pool


async def reserve(
    database: Database,
    engine: AsyncEngine,
    principal: Principal,
    *,
    request_id: str,
    tokens: int,
    micros: int,
    currency_code: str,
    ttl: timedelta,
    budgets: Sequence[AppliedBudget],
    rate_limits: Sequence[AppliedRateLimit],
) -> ReserveResult:
    """Hold the estimate on every budget and rate limit, or nothing (QuotaExceeded); repeats return the first."""
    tenant = principal.tenant_id
    for attempt in range(5):
        try:
            async with autocommit_connection(engine) as connection:
                now = datetime.now(UTC)
                outcome = await reserve_sql.execute(
                    connection,
                    reservation_id=str(uuid.uuid4()),
                    tenant=tenant,
                    request_id=request_id,
                    user=principal.subject,
                    api_key=principal.api_key_id,
                    tokens=tokens,
                    micros=micros,
                    currency=currency_code,
                    now=now,
                    ttl=ttl,
                    budgets=budgets,
                    rate_limits=rate_limits,
                )
            _refuse(outcome, now, tenant, tokens, micros)  # the statement already rolled itself back
            if outcome.row is None:  # a retry of a reservation already made: hold nothing again
                break
            return ReserveResult(row_from_columns(outcome.row), tuple(outcome.held))
        except (
            psycopg.errors.DeadlockDetected,
            psycopg.errors.SerializationFailure,
            psycopg.OperationalError,
        ):
            # Deadlock or serialization failure: PostgreSQL asks for a retry. OperationalError: a pooled
            # connection the database dropped (a restart); the retry gets a fresh one or fails the same way.
            if attempt == 4:
                raise
            await asyncio.sleep(0.001 * (2**attempt))
    async with database.session() as session:
        existing = await find_by_request(session, tenant, request_id, user_id=principal.subject)
    if existing is None:
        # The request id is another user's reservation: handing it over would tell its figures and let this
        # caller go on holding nothing. The unique key cannot hide that the id is taken; nothing else is told.
        raise FailedPrecondition(
            "request_id is already reserved by another caller",
            reason="RESERVATION_CONFLICT",
            metadata={"request_id": request_id},
        )
    return ReserveResult(existing, ())


def _refuse(
    outcome: reserve_sql.ReserveOutcome, now: datetime, tenant: str, tokens: int, micros: int
) -> None:
    _refuse_never_fitting(outcome, tenant, tokens, micros)
    if outcome.refused_rates:
        refused_rates = outcome.refused_rates
        metrics.record_budget_denial(tenant, "rate_limit")
        raise QuotaExceeded(
            "rate limit reached; retry after the delay in RetryInfo",
            reason="RATE_LIMITED",
            violations=[(r.scope_key, _describe_rate(r)) for r in refused_rates],
            retry_after=counters.rate_retry_after(now),
            metadata={"scope": refused_rates[0].scope_key},
        )
    if outcome.refused_budgets:
        refused = outcome.refused_budgets
        metrics.record_budget_denial(tenant, "budget")
        retry = max(b.window_end for b in refused) - now
        raise QuotaExceeded(
            f"budget {refused[0].budget_id} has no room for this request until its window resets",
            reason="BUDGET_EXCEEDED",
            violations=[(b.scope_key, _describe_budget(b)) for b in refused],
            retry_after=max(1.0, retry.total_seconds()),
            metadata={"budget_id": refused[0].budget_id, "scope": refused[0].scope_key},
        )


def _refuse_never_fitting(outcome: reserve_sql.ReserveOutcome, tenant: str, tokens: int, micros: int) -> None:
    """Refuse, FAILED_PRECONDITION without RetryInfo, a request whose estimate alone exceeds a refusing limit's
    whole capacity: a budget's limit, a rate limit's tokens per minute (one request always fits a positive
    requests-per-minute limit). No window will ever hold it, so waiting cannot help; only a smaller estimate
    (the caller's max_tokens) or a larger limit (the policy) can. Refused RESOURCE_EXHAUSTED with a RetryInfo
    until the window reset, as it was until 2026-12-06, a well-behaved client retried it for ever.

    Decided from the statement's refusal, not before it: a retry of a request_id already reserved returns its
    reservation whatever the policy says now, and the common path pays nothing for this check."""
    hopeless: list[tuple[str, str, dict[str, str]]] = []  # (subject, description, metadata)
    for budget in outcome.refused_budgets:
        estimate = counters.amount_for(budget.unit, tokens, micros)
        if estimate > budget.limit:
            what = f"budget {budget.budget_id}: the estimate of {estimate} {budget.unit}"
            hopeless.append(
                (
                    budget.scope_key,
                    f"{what} exceeds the limit itself ({budget.limit} {budget.unit} a window)",
                    {
                        "budget_id": budget.budget_id,
                        "estimate": str(estimate),
                        "limit": str(budget.limit),
                        "unit": budget.unit,
                    },
                )
            )
    for rate in outcome.refused_rates:
        if rate.tokens_per_minute and tokens > rate.tokens_per_minute:
            hopeless.append(
                (
                    rate.scope_key,
                    f"rate limit: the estimate of {tokens} tokens exceeds the limit itself "
                    f"({rate.tokens_per_minute} tokens/min)",
                    {
                        "estimate": str(tokens),
                        "limit": str(rate.tokens_per_minute),
                        "unit": "tokens_per_minute",
                    },
                )
            )
    if not hopeless:
        return
    subject, description, facts = hopeless[0]
    metrics.record_budget_denial(tenant, "budget" if "budget_id" in facts else "rate_limit")
    raise FailedPrecondition(
        f"the request's estimate can never fit: {description}; ask for fewer tokens or raise the limit",
        reason="ESTIMATE_EXCEEDS_LIMIT",
        metadata={**facts, "scope": subject},
        details=[
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(subject=s, description=d) for s, d, _ in hopeless
                ]
            )
        ],
    )


def _describe_budget(budget: AppliedBudget) -> str:
    unit = "tokens" if budget.unit == "tokens" else "micros"
    return f"budget {budget.budget_id}: limit {budget.limit} {unit} until {budget.window_end.isoformat()}"


def _describe_rate(limit: AppliedRateLimit) -> str:
    return (
        f"rate limit: {limit.requests_per_minute or 'unlimited'} requests/min, "
        f"{limit.tokens_per_minute or 'unlimited'} tokens/min"
    )


def _owned_by(user_id: str | None) -> tuple[str, dict[str, str]]:
    """The condition confining a lookup to ``user_id``'s reservations (None: any user of the tenant).

    A reservation belongs to the user who made it: the gateway settles and releases it with that user's token.
    Another user of the tenant naming it (its id, or its request id) must get what a reservation that does not
    exist gets, or a caller could free, settle or read holds that are not theirs (until 2026-12-06 it could).
    """
    return ("", {}) if user_id is None else (" AND user_id = :owner", {"owner": user_id})


async def find_by_request(
    session: AsyncSession, tenant: str, request_id: str, *, lock: bool = False, user_id: str | None = None
) -> ReservationRow | None:
    lock_clause = " FOR UPDATE" if lock else ""
    owner, params = _owned_by(user_id)
    row = (
        await session.execute(
            text(_SELECT + " WHERE tenant_id = :tenant AND request_id = :request" + owner + lock_clause),
            {"tenant": tenant, "request": request_id, **params},
        )
    ).first()
    return None if row is None else row_from_columns(row)


async def find(
    session: AsyncSession, tenant: str, reservation_id: str, *, lock: bool = False, user_id: str | None = None
) -> ReservationRow | None:
    lock_clause = " FOR UPDATE" if lock else ""
    owner, params = _owned_by(user_id)
    row = (
        await session.execute(
            text(
                _SELECT
                + " WHERE tenant_id = :tenant AND reservation_id = CAST(:id AS uuid)"
                + owner
                + lock_clause
            ),
            {"tenant": tenant, "id": reservation_id, **params},
        )
    ).first()
    return None if row is None else row_from_columns(row)


async def end(
    session: AsyncSession,
    tenant: str,
    reservation_id: str,
    state: str,
    reason: str = "",
    *,
    user_id: str | None = None,
) -> ReservationRow | None:
    """Move an active reservation to ``state``; None when it was not active (already ended or absent), or is not
    ``user_id``'s when that is given."""
    owner, params = _owned_by(user_id)
    row = (
        await session.execute(
            text(
                f"""
                UPDATE reservations SET state = :state, end_time = now(), release_reason = :reason
                WHERE tenant_id = :tenant AND reservation_id = CAST(:id AS uuid) AND state = 'active'{owner}
                RETURNING reservation_id, request_id, state, reserved_tokens, reserved_micros, currency_code,
                    create_time, expire_time, end_time, holds
                """
            ),
            {"tenant": tenant, "id": reservation_id, "state": state, "reason": reason, **params},
        )
    ).first()
    return None if row is None else row_from_columns(row)


async def claim_for_settlement(session: AsyncSession, record: UsageRecord) -> bool:
    """Take ``record``'s request id in the reservations' unique key with a reservation settled at once, holding
    nothing; False when a reservation of that request id exists after all (nothing written).

    Settle takes it when it charges a request without a reservation: a Reserve of that request id that did not
    answer the gateway in time may still commit, and its hold then stayed until it expired. The unique key
    decides the race in PostgreSQL, without a lookup added to Reserve: a Reserve inserting after this finds the
    id taken (waiting for this transaction if it is still open) and holds nothing; one that inserted first and
    has not committed yet is waited for here, and the caller then settles the reservation it made.
    """
    row = (
        await session.execute(
            text(
                """
                INSERT INTO reservations (reservation_id, tenant_id, request_id, user_id, api_key_id, state,
                    reserved_tokens, reserved_micros, currency_code, holds, create_time, expire_time, end_time)
                VALUES (CAST(:id AS uuid), :tenant, :request, :user, :key, 'settled', 0, 0, :currency,
                    CAST('[]' AS jsonb), now(), now(), now())
                ON CONFLICT (tenant_id, request_id) DO NOTHING
                RETURNING reservation_id
                """
            ),
            {
                "id": str(uuid.uuid4()),
                "tenant": record.tenant_id,
                "request": record.request_id,
                "user": record.user_id,
                "key": record.api_key_id,
                "currency": record.currency_code,
            },
        )
    ).first()
    return row is not None


async def mark_settled(session: AsyncSession, tenant: str, reservation_id: str) -> ReservationRow | None:
    """A released or expired reservation whose request still produced usage is settled after all."""
    row = (
        await session.execute(
            text(
                """
                UPDATE reservations SET state = 'settled', end_time = coalesce(end_time, now())
                WHERE tenant_id = :tenant AND reservation_id = CAST(:id AS uuid)
                  AND state IN ('released', 'expired')
                RETURNING reservation_id, request_id, state, reserved_tokens, reserved_micros, currency_code,
                    create_time, expire_time, end_time, holds
                """
            ),
            {"tenant": tenant, "id": reservation_id},
        )
    ).first()
    return None if row is None else row_from_columns(row)


async def expire_due(database: Database, batch: int = 500) -> int:
    """Expire active reservations past their expire_time and free their holds; returns how many.

    ``SKIP LOCKED`` lets every replica's sweeper run at once without two of them expiring the same row.
    """

    async def work(session: AsyncSession) -> int:
        rows = (
            await session.execute(
                text(
                    """
                    UPDATE reservations r SET state = 'expired', end_time = now()
                    FROM (SELECT reservation_id FROM reservations
                          WHERE state = 'active' AND expire_time <= now()
                          ORDER BY expire_time LIMIT :batch FOR UPDATE SKIP LOCKED) due
                    WHERE r.reservation_id = due.reservation_id
                    RETURNING r.tenant_id, r.holds
                    """
                ),
                {"batch": batch},
            )
        ).all()
        for tenant, raw in rows:
            holds = [Hold.from_json(h) for h in (raw if isinstance(raw, list) else json.loads(raw))]
            await counters.move_holds(session, tenant, holds, release=True, spent_tokens=0, spent_micros=0)
        return len(rows)

    return await with_retry(database, work)
