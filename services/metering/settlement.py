"""Settle and Release: replace a reservation's hold with the actual spend, in the ledger's transaction."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import psycopg
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from parapet.kit import metrics
from parapet.kit.database import Database
from parapet.kit.errors import FailedPrecondition, NotFound
from services.metering import counters, ledger, reservations, settle_sql
from services.metering.ledger import UsageRecord
from services.metering.limits import AppliedBudget
from services.metering.reservations import ReservationRow, with_retry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settlement:
    record: UsageRecord  # the ledger row (the first one, for a repeated request_id)
    reservation: ReservationRow | None
    appended: bool = True  # False: a repeated request_id, answered with the first settlement


def _not_found(reservation_id: str) -> NotFound:
    return NotFound(
        "no such reservation in the caller's tenant",
        reason="RESERVATION_NOT_FOUND",
        metadata={"resource": "reservation", "reservation_id": reservation_id},
    )


def _conflict(message: str, request_id: str) -> FailedPrecondition:
    return FailedPrecondition(message, reason="SETTLEMENT_CONFLICT", metadata={"request_id": request_id})


async def settle(
    database: Database,
    record: UsageRecord,
    budgets_now: Sequence[AppliedBudget],
    *,
    engine: AsyncEngine | None = None,
) -> Settlement:
    """Write ledger + outbox rows and move the spend onto the budget counters, all in one transaction.

    A repeated request_id with the same figures returns the first settlement and changes nothing; with other
    figures it is a SETTLEMENT_CONFLICT. Without a reservation (none given, or one the database no longer
    knows) the spend is charged to ``budgets_now``, without a limit check (the model already ran).
    With ``engine`` (raw psycopg connections), the common case, this request's active reservation settled
    for the first time, is one statement (``settle_sql``); every other case takes the statements below.
    """
    if engine is not None and record.reservation_id:
        settled = await _in_one_statement(engine, record)
        if settled is not None:
            _count(record)
            return Settlement(record, settled)
    tenant = record.tenant_id

    async def work(session: AsyncSession) -> Settlement:
        reservation = None
        settled_record = record
        if record.reservation_id:
            # Only the caller's own: another user's reservation is treated as one the database does not know.
            reservation = await reservations.find(
                session, tenant, record.reservation_id, lock=True, user_id=record.user_id
            )
            if reservation is None:
                # Reservations commit asynchronously (reserve_sql): one a database crash forgot still
                # settles, charged like a request without a reservation, so its usage is never lost.
                log.warning(
                    "settling against an unknown reservation", extra={"reservation_id": record.reservation_id}
                )
            elif reservation.request_id != record.request_id:
                raise _conflict("the reservation belongs to another request_id", record.request_id)
        else:
            # The gateway names no reservation when Reserve did not answer in time, yet that Reserve may
            # have committed: charging the usage besides would leave its hold in place until it expired,
            # refusing the caller's next requests meanwhile. The request's own reservation settles instead.
            reservation = await reservations.find_by_request(
                session, tenant, record.request_id, lock=True, user_id=record.user_id
            )
            if reservation is not None:
                settled_record = replace(record, reservation_id=reservation.reservation_id)
        if reservation is None and not await reservations.claim_for_settlement(session, record):
            # The request id is taken: by an earlier or concurrent Settle of it (its claim), another user's
            # reservation, or a Reserve that had inserted its reservation, not yet committed, when we looked
            # (the claim waited for it). All have committed now, so this statement's snapshot sees them.
            # Settled before: the first settlement decides (a repeat, or a conflict).
            first = await ledger.find(session, tenant, record.request_id)
            if first is not None:
                return await _repeat(session, record, first)
            # Another user's request, whatever reservation is named: settling it would move their hold onto
            # this caller's usage, and a ledger row under its request id would make their own Settle a
            # conflict. This caller's own reservation of the request settles, unless another one was named.
            reservation = await reservations.find_by_request(
                session, tenant, record.request_id, lock=True, user_id=record.user_id
            )
            if reservation is None or record.reservation_id:
                raise _conflict("request_id belongs to another reservation", record.request_id)
            settled_record = replace(record, reservation_id=reservation.reservation_id)
        appended = await ledger.append(session, settled_record)
        if appended is None:
            # The reservation found is this request's own (its request id was checked): naming it is no
            # "other" reservation even when the first settlement named none (it is that settlement's claim,
            # returned by a Reserve that came after it).
            return await _repeat(session, record, own_named=reservation is not None)
        spent = {"spent_tokens": record.total_tokens, "spent_micros": record.cost_micros}
        if reservation is None:
            await counters.charge(session, tenant, budgets_now, record.total_tokens, record.cost_micros)
            return Settlement(settled_record, None)
        if reservation.state == "active":
            ended = await reservations.end(session, tenant, reservation.reservation_id, "settled")
            assert ended is not None  # row locked above
            await counters.move_holds(session, tenant, ended.holds, release=True, **spent)
            return Settlement(settled_record, ended)
        if reservation.state == "settled":
            raise _conflict("the reservation is already settled", record.request_id)
        # Released or expired: its hold is gone, but the spend happened; charge the same counters.
        settled = await reservations.mark_settled(session, tenant, reservation.reservation_id)
        assert settled is not None
        await counters.move_holds(session, tenant, settled.holds, release=False, **spent)
        return Settlement(settled_record, settled)

    result = await with_retry(database, work)
    if result.appended:
        _count(record)
    return result


async def _in_one_statement(engine: AsyncEngine, record: UsageRecord) -> ReservationRow | None:
    """The settled reservation, or None when the statement did not apply or PostgreSQL asked for a retry
    (nothing was written either way; the statements path then decides, with its own retries)."""
    try:
        async with reservations.autocommit_connection(engine) as connection:
            columns = await settle_sql.execute(connection, record)
    except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure, psycopg.OperationalError):
        log.info("one-statement settle asked for a retry; settling statement by statement", exc_info=True)
        return None
    return None if columns is None else reservations.row_from_columns(columns)


def _count(record: UsageRecord) -> None:
    # Counted after the ledger row committed: once per settled request, never per retried transaction nor
    # for a repeated request_id.
    metrics.record_usage(
        record.tenant_id,
        model_label(record.model),
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        cached_tokens=record.cached_tokens,
        cost_micros=record.cost_micros,
        currency=record.currency_code,
    )


_MODEL_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,99}$")


def model_label(model: str) -> str:
    """The model as a metric label: a model name as callers report it, else ``other`` (never free text)."""
    return model if _MODEL_LABEL.match(model) else "other"


async def _repeat(
    session: AsyncSession, record: UsageRecord, first: UsageRecord | None = None, *, own_named: bool = False
) -> Settlement:
    first = first or await ledger.find(session, record.tenant_id, record.request_id)
    assert first is not None  # the conflict that skipped our insert is a committed row
    # A repeat naming no reservation is the same settlement whichever reservation the first one settled (the
    # request's own, found by its request_id).
    named_other = (
        bool(record.reservation_id) and first.reservation_id != record.reservation_id and not own_named
    )
    # Another user's settlement of that request id is no repeat of this caller's: never handed over.
    if not first.same_figures(record) or named_other or first.user_id != record.user_id:
        raise _conflict("request_id already settled with different figures", record.request_id)
    reservation = (
        await reservations.find(session, record.tenant_id, first.reservation_id, user_id=record.user_id)
        if first.reservation_id
        else None
    )
    return Settlement(first, reservation, appended=False)


async def release(
    database: Database, tenant: str, user_id: str, reservation_id: str, reason: str
) -> ReservationRow:
    """Free ``user_id``'s active reservation's holds; one already ended is returned unchanged. Another user's is
    RESERVATION_NOT_FOUND, as one that does not exist."""

    async def work(session: AsyncSession) -> ReservationRow:
        ended = await reservations.end(session, tenant, reservation_id, "released", reason, user_id=user_id)
        if ended is not None:
            await counters.move_holds(
                session, tenant, ended.holds, release=True, spent_tokens=0, spent_micros=0
            )
            return ended
        current = await reservations.find(session, tenant, reservation_id, user_id=user_id)
        if current is None:
            raise _not_found(reservation_id)
        return current

    return await with_retry(database, work)
