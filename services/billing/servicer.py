"""BillingService over gRPC: rollups and invoice previews of the caller's tenant (needs usage.read)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import grpc
from google.protobuf import timestamp_pb2

from parapet.billing.v1 import billing_service_pb2, billing_service_pb2_grpc, invoice_pb2, rollup_pb2
from parapet.kit import paging, wellknown
from parapet.kit.context import require_principal
from parapet.kit.database import Database
from parapet.kit.errors import FailedPrecondition, InvalidArgument
from parapet.kit.identity import Principal
from parapet.usage.v1 import money_pb2
from services.billing import rollups
from services.metering.access import require_usage_read
from services.metering.limits import month_start, next_month
from services.metering.policy import PolicySource


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _on_day_start(stamp: timestamp_pb2.Timestamp) -> bool:
    """Whether ``stamp`` is exactly 00:00 UTC, decided on the Timestamp itself: a datetime holds microseconds only,
    so a time a few nanoseconds past midnight became midnight (protobuf's seconds have no leap seconds: every day
    is 86,400 of them)."""
    return stamp.seconds % 86400 == 0 and stamp.nanos == 0


def _day(stamp: timestamp_pb2.Timestamp, field: str) -> date:
    """The UTC day that starts exactly at ``stamp``; PERIOD_INVALID when it is not 00:00 UTC."""
    moment = wellknown.moment(stamp, field)
    if not _on_day_start(stamp):
        raise InvalidArgument(
            f"{field} must be 00:00 UTC of a day",
            reason="PERIOD_INVALID",
            field_violations=[(field, "not on a UTC day boundary")],
        )
    return moment.date()


def _first_day_from(stamp: timestamp_pb2.Timestamp, field: str) -> date:
    """The first UTC day that starts at or after ``stamp``."""
    moment = wellknown.moment(stamp, field)
    if _on_day_start(stamp):
        return moment.date()
    if moment.date() == date.max:  # no day starts after 9999-12-31 00:00
        raise InvalidArgument(
            f"{field} is after the last day", field_violations=[(field, "after 9999-12-31")]
        )
    return moment.date() + timedelta(days=1)


_INT64 = range(-(2**63), 2**63)


def _check_fits(lines: list[rollups.InvoiceLineRow]) -> None:
    """Refuse a preview whose figures an int64 field cannot carry. Each rollup fits (bigint), but a line sums many
    of them and the total all lines; PostgreSQL sums them exactly (numeric), and the response could not be built:
    INTERNAL, where the caller can do something about it (a shorter period)."""
    sums = [
        value
        for line in lines
        for value in (
            line.request_count,
            line.prompt_tokens,
            line.completion_tokens,
            line.cached_tokens,
            line.cost_micros,
        )
    ]
    sums += [sum(line.cost_micros for line in lines), sum(line.request_count for line in lines)]
    if any(value not in _INT64 for value in sums):
        raise FailedPrecondition(
            "the period's usage sums exceed what an invoice preview can hold (int64); ask for a shorter period",
            reason="INVOICE_OUT_OF_RANGE",
        )


def _decode_position(token: str, query: str) -> rollups.Position | None:
    """The rollup a page token says the page starts after (its day and key digest); PAGE_TOKEN_INVALID for anything
    else, before it reaches a query."""
    match paging.decode(token, query):
        case None:
            return None
        case [str(day), str(digest)] if len(digest) == 64:
            try:
                return date.fromisoformat(day), digest
            except ValueError:
                pass
    raise paging.invalid_token()


class BillingServicer(billing_service_pb2_grpc.BillingServiceServicer):
    def __init__(self, database: Database, policies: PolicySource) -> None:
        self._database = database
        self._policies = policies

    async def _authorize(self) -> Principal:
        principal = require_principal()
        require_usage_read(principal, await self._policies.get(principal.tenant_id))
        return principal

    async def ListRollups(
        self, request: billing_service_pb2.ListRollupsRequest, context: grpc.aio.ServicerContext
    ) -> billing_service_pb2.ListRollupsResponse:
        caller = await self._authorize()
        tenant = caller.tenant_id
        # Days starting at or after start_time and before end_time: both bounds round up to a day start.
        start = _first_day_from(request.start_time, "start_time") if request.HasField("start_time") else None
        end = _first_day_from(request.end_time, "end_time") if request.HasField("end_time") else None
        if start is not None and end is not None and end < start:
            raise InvalidArgument(
                "end_time is before start_time",
                reason="PERIOD_INVALID",
                field_violations=[("end_time", "before start_time")],
            )
        size = paging.page_size(request.page_size)
        query = paging.query_key(request, tenant, caller.subject)
        after = _decode_position(request.page_token, query)
        async with self._database.session() as session:
            try:
                rows, more = await rollups.list_rollups(
                    session,
                    tenant,
                    start=start,
                    end=end,
                    model=request.model,
                    feature=request.feature,
                    after=after,
                    limit=size,
                )
            except rollups.UnknownPosition:
                raise paging.invalid_token() from None
        return billing_service_pb2.ListRollupsResponse(
            rollups=[
                rollup_pb2.Rollup(
                    day_start_time=_timestamp(_midnight(r.day)),
                    model=r.model,
                    provider=r.provider,
                    feature=r.feature,
                    request_count=r.request_count,
                    prompt_tokens=r.prompt_tokens,
                    completion_tokens=r.completion_tokens,
                    cached_tokens=r.cached_tokens,
                    cost=money_pb2.Money(currency_code=r.currency_code, amount_micros=r.cost_micros),
                    estimated_request_count=r.estimated_request_count,
                    update_time=_timestamp(r.update_time),
                )
                for r in rows
            ],
            next_page_token=paging.encode([rows[-1].day.isoformat(), rows[-1].key_digest], query)
            if more
            else "",
        )

    async def GetInvoicePreview(
        self, request: billing_service_pb2.GetInvoicePreviewRequest, context: grpc.aio.ServicerContext
    ) -> billing_service_pb2.GetInvoicePreviewResponse:
        tenant = (await self._authorize()).tenant_id
        this_month = month_start(datetime.now(UTC))
        start = (
            _day(request.start_time, "start_time") if request.HasField("start_time") else this_month.date()
        )
        end = (
            _day(request.end_time, "end_time")
            if request.HasField("end_time")
            else next_month(this_month).date()
        )
        if end <= start:
            raise InvalidArgument(
                "end_time must be after start_time",
                reason="PERIOD_INVALID",
                field_violations=[("end_time", "not after start_time")],
            )
        async with self._database.session() as session:
            lines = await rollups.invoice_lines(session, tenant, start, end)
        _check_fits(lines)
        currencies = sorted({line.currency_code for line in lines})
        if len(currencies) > 1:
            # A deployment prices in one currency (metering's setting), but it may have been changed within the
            # period; amounts in two currencies have no sum, and adding them under one code misstates the total.
            raise FailedPrecondition(
                f"the period's usage is in several currencies ({', '.join(currencies)}), which have no total; "
                "ask for the periods before and after the change, or read each currency's rollups (ListRollups)",
                reason="CURRENCY_MISMATCH",
                metadata={"currency_codes": ",".join(currencies)},
            )
        preview = invoice_pb2.InvoicePreview(
            start_time=_timestamp(_midnight(start)),
            end_time=_timestamp(_midnight(end)),
            lines=[
                invoice_pb2.InvoiceLine(
                    model=line.model,
                    feature=line.feature,
                    request_count=line.request_count,
                    prompt_tokens=line.prompt_tokens,
                    completion_tokens=line.completion_tokens,
                    cached_tokens=line.cached_tokens,
                    cost=money_pb2.Money(currency_code=line.currency_code, amount_micros=line.cost_micros),
                )
                for line in lines
            ],
            total=money_pb2.Money(
                currency_code=currencies[0] if currencies else "",
                amount_micros=sum(line.cost_micros for line in lines),
            ),
            event_count=sum(line.request_count for line in lines),
        )
        if lines:
            preview.as_of_time.CopyFrom(_timestamp(max(line.last_occur_time for line in lines)))
        return billing_service_pb2.GetInvoicePreviewResponse(invoice_preview=preview)
