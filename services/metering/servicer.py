"""MeteringService over gRPC: validation and proto conversion around the reservation and ledger logic."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import timestamp_pb2
from sqlalchemy.ext.asyncio import AsyncEngine

from parapet.events import audit as audit_events
from parapet.events.usage import MAX_MICROS, MAX_NAME_CHARS, MAX_NAMES_BYTES, MAX_TOKENS, names_too_long
from parapet.kit import paging, wellknown
from parapet.kit.bus import Bus
from parapet.kit.context import require_principal
from parapet.kit.database import Database
from parapet.kit.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unavailable
from parapet.metering.v1 import (
    budget_status_pb2,
    metering_service_pb2,
    metering_service_pb2_grpc,
    reservation_pb2,
    usage_report_pb2,
)
from parapet.usage.v1 import money_pb2, token_usage_pb2
from services.metering import counters, replay, reservations, settlement, usage
from services.metering.access import can_read_usage, require_platform_admin
from services.metering.counters import CounterState
from services.metering.ledger import UsageRecord
from services.metering.limits import AppliedBudget, applicable_budgets, applicable_rate_limits
from services.metering.policy import PolicySource
from services.metering.relay import OutboxRelay
from services.metering.reservations import ReservationRow
from services.metering.settings import MeteringSettings

_STATES = {
    "active": reservation_pb2.RESERVATION_STATE_ACTIVE,
    "settled": reservation_pb2.RESERVATION_STATE_SETTLED,
    "released": reservation_pb2.RESERVATION_STATE_RELEASED,
    "expired": reservation_pb2.RESERVATION_STATE_EXPIRED,
}
_MAX_ID = 128
_REASON = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")

log = logging.getLogger(__name__)


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _uuid(value: str, field: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument(
            f"{field} is not a reservation id", field_violations=[(field, "not a UUID")]
        ) from None


def _out_of_range(figures: Iterable[tuple[str, int]], ceiling: int) -> list[tuple[str, str]]:
    """Field violations of the ``(field, value)`` figures outside ``[0, ceiling]``."""
    return [
        (field, "negative" if value < 0 else f"at most {ceiling}")
        for field, value in figures
        if not 0 <= value <= ceiling
    ]


def _usage_position(token: str, query: str) -> str | None:
    """The key digest of the group a GetUsage page token says the page starts after; PAGE_TOKEN_INVALID for
    anything else (an offset token of a release before 2026-12-06 included)."""
    position = paging.decode_text(token, query)
    if position is not None and not re.fullmatch(r"[0-9a-f]{64}", position):
        raise paging.invalid_token()
    return position


def _request_id(value: str, field: str = "request_id") -> str:
    if not value or len(value) > _MAX_ID:
        raise InvalidArgument(
            f"{field} is required (1-{_MAX_ID} characters)",
            field_violations=[(field, "required, at most 128")],
        )
    return value


REPLAY_METHOD = "/parapet.metering.v1.MeteringService/ReplayUsageEvents"
AUDIT_SOURCE = "/parapet/metering"


def _check_replay_start(start: datetime, window: replay.Window) -> None:
    """A start the outbox no longer fully covers is refused, never replayed in part: rows sent before the
    retention are deleted, and a replay reaching past them would silently leave their events unpublished."""
    if start > window.began:
        raise InvalidArgument(
            "start_time is in the future", field_violations=[("start_time", "not after the current time")]
        )
    if start < window.earliest_start:
        earliest = window.earliest_start.isoformat()
        raise InvalidArgument(
            f"start_time is older than the outbox keeps sent events; the earliest replayable is {earliest}",
            reason="REPLAY_WINDOW_EXCEEDED",
            field_violations=[("start_time", f"at or after {earliest} (PARAPET_OUTBOX_RETENTION_SECONDS)")],
            metadata={"earliest_start_time": earliest},
        )


class MeteringServicer(metering_service_pb2_grpc.MeteringServiceServicer):
    def __init__(
        self,
        database: Database,
        reserve_engine: AsyncEngine,
        policies: PolicySource,
        relay: OutboxRelay,
        settings: MeteringSettings,
        bus: Bus,
    ) -> None:
        self._database = database
        self._bus = bus
        self._reserve_engine = reserve_engine
        self._policies = policies
        self._relay = relay
        self._settings = settings
        self._currency = settings.currency_code

    def _money(self, micros: int) -> money_pb2.Money:
        return money_pb2.Money(currency_code=self._currency, amount_micros=micros)

    def _micros(self, money: money_pb2.Money, field: str) -> int:
        """Micros of ``money`` in the deployment currency; an empty currency with 0 micros is zero."""
        if money.currency_code and money.currency_code != self._currency:
            raise FailedPrecondition(
                f"{field} is in {money.currency_code}; prices and budgets are in {self._currency}",
                reason="CURRENCY_MISMATCH",
                metadata={"currency_code": self._currency},
            )
        if not money.currency_code and money.amount_micros:
            raise InvalidArgument(
                f"{field} needs a currency_code", field_violations=[(f"{field}.currency_code", "required")]
            )
        violations = _out_of_range([(f"{field}.amount_micros", money.amount_micros)], MAX_MICROS)
        if violations:
            raise InvalidArgument(f"{field} is out of range", field_violations=violations)
        return money.amount_micros

    def _refuse_foreign(self, budgets: Sequence[AppliedBudget]) -> None:
        """Refuse a request charged against a cost budget set in another currency than the deployment's.

        Metering has no exchange rates: applying "1000 JPY" as 1000 USD would allow about 150 times the
        spend meant, and skipping the budget would leave the request unbudgeted, both silently. Failing
        closed makes the misconfiguration visible on the first request, and never overspends.
        """
        foreign = next((b for b in budgets if b.foreign_to(self._currency)), None)
        if foreign is not None:
            raise FailedPrecondition(
                f"budget {foreign.budget_id!r} is set in {foreign.currency_code or 'no currency'}; "
                f"this deployment's prices and budgets are in {self._currency}",
                reason="CURRENCY_MISMATCH",
                metadata={
                    "budget_id": foreign.budget_id,
                    "budget_currency_code": foreign.currency_code,
                    "currency_code": self._currency,
                },
            )

    def _measurable(self, budgets: Sequence[AppliedBudget]) -> list[AppliedBudget]:
        """``budgets`` without those in another currency: Settle records a spend that already happened and
        must not fail for them (Reserve refuses the requests they apply to); they are never charged."""
        foreign = [b.budget_id for b in budgets if b.foreign_to(self._currency)]
        if foreign:
            log.warning(
                "cost budgets in another currency than the deployment's are not charged",
                extra={"budget_ids": foreign, "currency_code": self._currency},
            )
        return [b for b in budgets if not b.foreign_to(self._currency)]

    def _reservation(self, row: ReservationRow) -> reservation_pb2.Reservation:
        message = reservation_pb2.Reservation(
            reservation_id=row.reservation_id,
            request_id=row.request_id,
            state=_STATES[row.state],
            reserved_tokens=row.reserved_tokens,
            reserved_cost=money_pb2.Money(currency_code=row.currency_code, amount_micros=row.reserved_micros),
            create_time=_timestamp(row.create_time),
            expire_time=_timestamp(row.expire_time),
        )
        if row.end_time is not None:
            message.end_time.CopyFrom(_timestamp(row.end_time))
        return message

    def _status(self, budget: AppliedBudget, state: CounterState | None) -> budget_status_pb2.BudgetStatus:
        if budget.foreign_to(self._currency):
            return self._foreign_status(budget)
        spent = 0 if state is None else state.used + state.reserved
        percent = spent * 100 // budget.limit if budget.limit > 0 else 100
        status = budget_status_pb2.BudgetStatus(
            budget_id=budget.budget_id,
            scope_id=budget.scope_id,
            used_percent=min(percent, 2**31 - 1),
            soft_limit_reached=budget.soft_limit_percent > 0 and percent >= budget.soft_limit_percent,
            window_end_time=_timestamp(budget.window_end),
        )
        if budget.unit == "tokens":
            status.used_tokens, status.limit_tokens = spent, budget.limit
        else:
            status.used_cost.CopyFrom(self._money(spent))
            status.limit_cost.CopyFrom(self._money(budget.limit))
        return status

    @staticmethod
    def _foreign_status(budget: AppliedBudget) -> budget_status_pb2.BudgetStatus:
        """A cost budget in another currency: its limit as the policy states it, and no ``used_cost``, since
        metering measures no spend in that currency (a counter of the same id holds the deployment's)."""
        return budget_status_pb2.BudgetStatus(
            budget_id=budget.budget_id,
            scope_id=budget.scope_id,
            limit_cost=money_pb2.Money(currency_code=budget.currency_code, amount_micros=budget.limit),
            window_end_time=_timestamp(budget.window_end),
        )

    async def Reserve(
        self, request: metering_service_pb2.ReserveRequest, context: grpc.aio.ServicerContext
    ) -> metering_service_pb2.ReserveResponse:
        principal = require_principal()
        _request_id(request.request_id)
        violations = _out_of_range([("estimated_tokens", request.estimated_tokens)], MAX_TOKENS)
        if violations:
            raise InvalidArgument("estimated_tokens is out of range", field_violations=violations)
        micros = self._micros(request.estimated_cost, "estimated_cost")
        ttl = timedelta(seconds=self._settings.reservation_ttl_seconds)
        if request.HasField("ttl"):
            ttl = wellknown.span(request.ttl, "ttl")
            if ttl <= timedelta(0) or ttl.total_seconds() > self._settings.reservation_max_ttl_seconds:
                raise InvalidArgument(
                    "ttl must be positive and at most the maximum reservation lifetime",
                    field_violations=[("ttl", f"0 < ttl <= {self._settings.reservation_max_ttl_seconds} s")],
                )
        policy = await self._policies.get(principal.tenant_id)
        now = datetime.now(UTC)
        budgets = applicable_budgets(policy, principal, now)
        self._refuse_foreign(budgets)
        result = await reservations.reserve(
            self._database,
            self._reserve_engine,
            principal,
            request_id=request.request_id,
            tokens=request.estimated_tokens,
            micros=micros,
            currency_code=self._currency,
            ttl=ttl,
            budgets=budgets,
            rate_limits=applicable_rate_limits(policy, principal),
        )
        by_key = {(c.budget_id, c.scope_key, c.unit, c.window_start): c for c in result.held}
        warnings = [
            status
            for budget in budgets
            if budget.key in by_key
            for status in [self._status(budget, by_key[budget.key])]
            if status.soft_limit_reached
        ]
        return metering_service_pb2.ReserveResponse(
            reservation=self._reservation(result.reservation), soft_limit_warnings=warnings
        )

    async def Settle(
        self, request: metering_service_pb2.SettleRequest, context: grpc.aio.ServicerContext
    ) -> metering_service_pb2.SettleResponse:
        principal = require_principal()
        _request_id(request.request_id)
        reservation_id = _uuid(request.reservation_id, "reservation_id") if request.reservation_id else ""
        tokens = request.usage
        violations = _out_of_range(
            (
                (f"usage.{name}", getattr(tokens, name))
                for name in ("prompt_tokens", "completion_tokens", "cached_tokens")
            ),
            MAX_TOKENS,
        )
        if tokens.cached_tokens > tokens.prompt_tokens:
            violations.append(("usage.cached_tokens", "more than prompt_tokens"))
        latency = wellknown.as_timedelta(request.latency)
        if latency is None:
            violations.append(("latency", "not a valid duration"))
        elif latency < timedelta(0):
            violations.append(("latency", "negative"))
        for name in ("feature", "model", "provider", "requested_model"):
            if len(getattr(request, name)) > MAX_NAME_CHARS:
                violations.append((name, f"at most {MAX_NAME_CHARS} characters"))
        if names_too_long(request.model, request.provider, request.feature):
            # Accepted, such a settlement's event fitted no rollup: billing would set it aside, uncharged.
            violations.append(
                ("model", f"model, provider and feature at most {MAX_NAMES_BYTES} bytes together")
            )
        # Labels travel in every event and ledger row: bounded, so one caller cannot bloat either.
        if len(request.labels) > 32:
            violations.append(("labels", "at most 32 labels"))
        violations += [
            (f"labels[{key!r}]", "key at most 64, value at most 256 characters")
            for key, value in request.labels.items()
            if not key or len(key) > 64 or len(value) > 256
        ]
        if violations:
            raise InvalidArgument("usage figures are invalid", field_violations=violations)
        assert latency is not None  # a violation otherwise, raised above
        micros = self._micros(request.cost, "cost")
        now = datetime.now(UTC)
        occur = (
            wellknown.moment(request.complete_time, "complete_time")
            if request.HasField("complete_time")
            else now
        )
        record = UsageRecord(
            tenant_id=principal.tenant_id,
            request_id=request.request_id,
            user_id=principal.subject,
            api_key_id=principal.api_key_id,
            reservation_id=reservation_id,
            feature=request.feature,
            model=request.model,
            requested_model=request.requested_model,
            provider=request.provider,
            prompt_tokens=tokens.prompt_tokens,
            completion_tokens=tokens.completion_tokens,
            cached_tokens=tokens.cached_tokens,
            estimated=tokens.estimated,
            cost_micros=micros,
            currency_code=self._currency,
            cached=request.cached,
            latency_micros=latency // timedelta(microseconds=1),
            occur_time=occur,
            labels=dict(request.labels),
        )
        # Charged only when the request has no (known) reservation; the policy is cached, so this is cheap.
        budgets = self._measurable(
            applicable_budgets(await self._policies.get(principal.tenant_id), principal, now)
        )
        result = await settlement.settle(self._database, record, budgets, engine=self._reserve_engine)
        self._relay.wake()
        response = metering_service_pb2.SettleResponse(usage_event_id=result.record.event_id)
        if result.reservation is not None:
            response.reservation.CopyFrom(self._reservation(result.reservation))
        return response

    async def Release(
        self, request: metering_service_pb2.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> metering_service_pb2.ReleaseResponse:
        principal = require_principal()
        if not request.reservation_id:
            raise InvalidArgument(
                "reservation_id is required", field_violations=[("reservation_id", "required")]
            )
        reservation_id = _uuid(request.reservation_id, "reservation_id")
        if request.reason and not _REASON.match(request.reason):
            raise InvalidArgument(
                "reason must be UPPER_SNAKE", field_violations=[("reason", "UPPER_SNAKE, at most 64")]
            )
        row = await settlement.release(
            self._database, principal.tenant_id, principal.subject, reservation_id, request.reason
        )
        return metering_service_pb2.ReleaseResponse(reservation=self._reservation(row))

    async def GetUsage(
        self, request: metering_service_pb2.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> metering_service_pb2.GetUsageResponse:
        principal = require_principal()
        if not request.HasField("start_time"):
            raise InvalidArgument("start_time is required", field_violations=[("start_time", "required")])
        start = wellknown.moment(request.start_time, "start_time")
        now = datetime.now(UTC)
        end = wellknown.moment(request.end_time, "end_time") if request.HasField("end_time") else now
        if end <= start:
            raise InvalidArgument(
                "end_time must be after start_time", field_violations=[("end_time", "not after start_time")]
            )
        dimensions: Sequence[int] = list(request.group_by)
        bad = [i for i, d in enumerate(dimensions) if d not in usage.DIMENSIONS]
        if bad or len(set(dimensions)) != len(dimensions):
            raise InvalidArgument(
                "group_by holds an unknown or repeated dimension",
                field_violations=[(f"group_by[{i}]", "unknown or repeated") for i in bad or [0]],
            )
        size = paging.page_size(request.page_size)
        query = paging.query_key(request, principal.tenant_id, principal.subject)
        after = _usage_position(request.page_token, query)
        policy = await self._policies.get(principal.tenant_id)
        user_id = request.user_id
        reads_usage = can_read_usage(principal, policy)
        if not reads_usage:
            # Without usage.read a caller sees exactly its own usage.
            if user_id and user_id != principal.subject:
                raise PermissionDenied(
                    "reading another user's usage needs the usage.read permission",
                    metadata={"permission": "usage.read"},
                )
            user_id = principal.subject
        usage_filter = usage.UsageFilter(
            principal.tenant_id, start, end, user_id, request.model, request.feature
        )
        try:
            page, total, more = await usage.query(self._database, usage_filter, dimensions, after, size)
        except usage.UnknownPosition:
            raise paging.invalid_token() from None
        subject = replace(principal, subject=user_id, api_key_id="") if user_id else principal
        budgets = applicable_budgets(policy, subject, now)
        if user_id:
            budgets = [b for b in budgets if not b.scope_key.startswith("api_key:")]
        if not reads_usage:
            # Its own usage only: a tenant-wide budget's figures are the whole tenant's spend (they were shown to
            # every caller until 2026-12-06; the gateway's soft-limit notices tell a chat user the share used).
            budgets = [b for b in budgets if b.scope_key.startswith("user:")]
        async with self._database.session() as session:
            states = await counters.counter_states(session, principal.tenant_id, budgets)
        response = metering_service_pb2.GetUsageResponse(
            aggregates=[self._aggregate(row) for row in page],
            total=self._aggregate(total),
            budgets=[self._status(b, states.get(b.key)) for b in budgets],
            next_page_token=paging.encode([str(page[-1]["key_digest"])], query) if more else "",
        )
        return response

    async def ReplayUsageEvents(
        self, request: metering_service_pb2.ReplayUsageEventsRequest, context: grpc.aio.ServicerContext
    ) -> metering_service_pb2.ReplayUsageEventsResponse:
        principal = require_principal()
        require_platform_admin(
            principal,
            await self._policies.get(principal.tenant_id),
            self._settings.auth_platform_tenant_id,
            "replaying usage events",
        )
        if not request.HasField("start_time"):
            raise InvalidArgument("start_time is required", field_violations=[("start_time", "required")])
        start = wellknown.moment(request.start_time, "start_time")
        window = await replay.window(
            self._database, timedelta(seconds=self._settings.outbox_retention_seconds)
        )
        _check_replay_start(start, window)
        count = await replay.mark_unsent(self._database, start, window.began, after_batch=self._relay.wake)
        log.warning(
            "usage events marked for publishing again",
            extra={"start_time": start.isoformat(), "event_count": count, "subject": principal.subject},
        )
        # In the operator's (platform) tenant's trail, like auth's admin actions. Published after the rows are
        # marked, so it states how many; a replay whose record cannot be written fails instead, and the
        # operator's retry (a replay counts each event once in billing however often it runs) records it.
        record = audit_events.admin_record(
            principal.tenant_id,
            principal,
            REPLAY_METHOD,
            "usage-events",
            attributes={"start_time": start.isoformat(), "event_count": str(count)},
        )
        try:
            await audit_events.publish(self._bus, record, source=AUDIT_SOURCE)
        except Exception as error:
            log.error("the replay's audit record was not published: %r", error)
            raise Unavailable(
                f"{count} usage events were marked for publishing again, but the audit trail could not record "
                "the replay; run it again (billing counts each event once however often it is replayed)",
                reason="AUDIT_UNAVAILABLE",
                retry_after=1.0,
            ) from error
        return metering_service_pb2.ReplayUsageEventsResponse(
            event_count=count, earliest_start_time=_timestamp(window.earliest_start)
        )

    def _aggregate(self, row: dict[str, object]) -> usage_report_pb2.UsageAggregate:
        aggregate = usage_report_pb2.UsageAggregate(
            model=str(row.get("model") or ""),
            feature=str(row.get("feature") or ""),
            user_id=str(row.get("user_id") or ""),
            api_key_id=str(row.get("api_key_id") or ""),
            request_count=int(row["request_count"]),  # type: ignore[call-overload]
            usage=token_usage_pb2.TokenUsage(
                prompt_tokens=int(row["prompt_tokens"]),  # type: ignore[call-overload]
                completion_tokens=int(row["completion_tokens"]),  # type: ignore[call-overload]
                cached_tokens=int(row["cached_tokens"]),  # type: ignore[call-overload]
                estimated=bool(row["estimated"]),
            ),
            cost=self._money(int(row["cost_micros"])),  # type: ignore[call-overload]
            cached_request_count=int(row["cached_request_count"]),  # type: ignore[call-overload]
        )
        bucket = row.get("day") or row.get("month")
        if isinstance(bucket, datetime):
            aggregate.bucket_start_time.CopyFrom(_timestamp(bucket.replace(tzinfo=UTC)))
        return aggregate
