"""Billing's reads against real PostgreSQL over a real channel, while usage keeps arriving: ListRollups pages that
neither repeat nor skip a rollup, and an invoice preview whose sums do not fit its fields refused in clear."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.protobuf import timestamp_pb2

from parapet.billing.v1 import billing_service_pb2 as bpb
from parapet.billing.v1 import billing_service_pb2_grpc
from parapet.kit.database import Database
from parapet.kit.errors import error_details
from parapet.kit.testing import PAGE_TOKEN_REFUSED, TestKeys, refusal, running
from parapet.usage.v1 import usage_event_pb2
from services.billing.app import APP as BILLING
from tests.integration.billing.conftest import apply_events, usage_event
from tests.integration.metering.metering_support import (
    billing_settings,
    caller,
    new_tenant,
    reader_policy,
    write_policies,
)

DAY = datetime(2026, 11, 3, tzinfo=UTC)


def _event(
    tenant: str, model: str, feature: str, day: datetime, micros: int = 1000
) -> usage_event_pb2.UsageEvent:
    event = usage_event(tenant, 1)
    event.model, event.feature = model, feature
    event.cost.amount_micros = micros
    event.occur_time.FromDatetime(day + timedelta(hours=10))
    return event


@pytest.fixture
async def billing(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str, policy_file: Path
) -> AsyncIterator[billing_service_pb2_grpc.BillingServiceStub]:
    async with (
        running(BILLING, billing_settings(tmp_path, keys, database_url, nats_url, policy_file)) as (_s, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield billing_service_pb2_grpc.BillingServiceStub(channel)


async def test_rollup_pages_never_repeat_a_rollup_while_new_ones_arrive(
    billing: billing_service_pb2_grpc.BillingServiceStub,
    database: Database,
    keys: TestKeys,
    policy_file: Path,
) -> None:
    """Pages were offsets into the listing: a rollup created between two pages (a new model's first request
    today, or a late event of a day already listed) moved every later row one place on, and the next page
    began with the last row of the previous one: a finance team summing the pages counted it twice."""
    tenant = new_tenant()
    write_policies(policy_file, {tenant: reader_policy()})
    analyst = caller(keys, tenant, "erin", roles=("analyst",))
    await apply_events(database, [_event(tenant, f"m-{i}", "chat", DAY) for i in (1, 2, 3, 4)])
    await apply_events(database, [_event(tenant, "m-1", "chat", DAY + timedelta(days=1))])

    first = await billing.ListRollups(bpb.ListRollupsRequest(page_size=2), metadata=analyst)
    assert [r.model for r in first.rollups] == ["m-1", "m-2"]
    # Late and new usage lands before the position the next page starts from.
    await apply_events(database, [_event(tenant, "m-0", "chat", DAY), _event(tenant, "m-0", "", DAY)])
    listed = [(r.day_start_time.seconds, r.model, r.feature) for r in first.rollups]
    page = first
    while page.next_page_token:
        page = await billing.ListRollups(
            bpb.ListRollupsRequest(page_size=2, page_token=page.next_page_token), metadata=analyst
        )
        listed.extend((r.day_start_time.seconds, r.model, r.feature) for r in page.rollups)
    day, next_day = int(DAY.timestamp()), int((DAY + timedelta(days=1)).timestamp())
    assert listed == [
        (day, "m-1", "chat"),
        (day, "m-2", "chat"),
        (day, "m-3", "chat"),
        (day, "m-4", "chat"),
        (next_day, "m-1", "chat"),
    ]
    # A token names a rollup of the caller's tenant: another tenant's caller, or a made-up position, is refused.
    other = new_tenant()
    write_policies(policy_file, {tenant: reader_policy(), other: reader_policy()})
    token = first.next_page_token
    for request, who in (
        (
            bpb.ListRollupsRequest(page_size=2, page_token=token),
            caller(keys, other, "erin", roles=("analyst",)),
        ),
        (bpb.ListRollupsRequest(page_size=3, page_token=token + "x"), analyst),
    ):
        assert await refusal(billing.ListRollups(request, metadata=who)) == PAGE_TOKEN_REFUSED, request


def _days(count: int) -> bpb.GetInvoicePreviewRequest:
    """A preview of ``count`` days from DAY."""
    start, end = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    start.FromDatetime(DAY)
    end.FromDatetime(DAY + timedelta(days=count))
    return bpb.GetInvoicePreviewRequest(start_time=start, end_time=end)


async def test_an_invoice_whose_sums_do_not_fit_is_refused_clearly(
    billing: billing_service_pb2_grpc.BillingServiceStub,
    database: Database,
    keys: TestKeys,
    policy_file: Path,
) -> None:
    """Two days each within bigint whose sum is not: the preview's int64 total could not be built, INTERNAL."""
    tenant = new_tenant()
    write_policies(policy_file, {tenant: reader_policy()})
    analyst = caller(keys, tenant, "erin", roles=("analyst",))
    await apply_events(
        database, [_event(tenant, "m", "f", DAY, 2**62), _event(tenant, "m", "f", DAY + timedelta(1), 2**62)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await billing.GetInvoicePreview(_days(2), metadata=analyst)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value
    assert error_details(refused.value).reason == "INVOICE_OUT_OF_RANGE"
    # Each day alone fits.
    one_day = await billing.GetInvoicePreview(_days(1), metadata=analyst)
    assert one_day.invoice_preview.total.amount_micros == 2**62


async def test_an_invoice_over_several_currencies_is_refused_rather_than_summed(
    billing: billing_service_pb2_grpc.BillingServiceStub,
    database: Database,
    keys: TestKeys,
    policy_file: Path,
) -> None:
    """A deployment that changed PARAPET_CURRENCY_CODE within a period has rollups in both currencies. The preview
    added their micros into one total labelled with the first currency code: 1 EUR + 1 USD made "2 EUR"."""
    tenant = new_tenant()
    write_policies(policy_file, {tenant: reader_policy()})
    analyst = caller(keys, tenant, "erin", roles=("analyst",))
    euros = _event(tenant, "m", "f", DAY + timedelta(days=1), 1_000_000)
    euros.cost.currency_code = "EUR"
    await apply_events(database, [_event(tenant, "m", "f", DAY, 1_000_000), euros])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await billing.GetInvoicePreview(_days(2), metadata=analyst)
    details = error_details(refused.value)
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CURRENCY_MISMATCH")
    assert details.error_info is not None and details.error_info.metadata["currency_codes"] == "EUR,USD"
    # A period in one currency is previewed as before.
    usd = await billing.GetInvoicePreview(_days(1), metadata=analyst)
    assert (usd.invoice_preview.total.currency_code, usd.invoice_preview.total.amount_micros) == (
        "USD",
        1_000_000,
    )
