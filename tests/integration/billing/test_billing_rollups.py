"""Billing end to end: metering settles, the relay publishes, billing's consumer rolls up, the RPCs read."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.protobuf import timestamp_pb2

from parapet.billing.v1 import billing_service_pb2 as bpb
from parapet.kit.errors import error_details
from parapet.kit.testing import PAGE_TOKEN_REFUSED, TestKeys, refusal
from parapet.metering.v1 import metering_service_pb2 as mpb
from parapet.metering.v1.usage_report_pb2 import USAGE_DIMENSION_FEATURE, USAGE_DIMENSION_MODEL
from tests.integration.metering.metering_support import (
    caller,
    new_tenant,
    reader_policy,
    settle,
    suite,
    wait_until_rollups_match,
    write_policies,
)


async def test_rollups_and_invoice_equal_the_ledger(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str, policy_file: Path
) -> None:
    tenant = new_tenant()
    write_policies(policy_file, {tenant: reader_policy()})
    async with suite(tmp_path, keys, database_url, nats_url, policy_file) as (metering, billing):
        who = caller(keys, tenant, "dave")
        requests = [
            settle(i, ("m-a", "m-b")[i % 2], ("chat", "")[i % 3 == 0], 1_000 + 7 * i) for i in range(60)
        ]
        await asyncio.gather(*(metering.Settle(r, metadata=who) for r in requests))
        await wait_until_rollups_match(database_url, tenant, 60)

        analyst = caller(keys, tenant, "erin", roles=("analyst",))
        page = await billing.ListRollups(bpb.ListRollupsRequest(page_size=2), metadata=analyst)
        first_token, rollups = page.next_page_token, list(page.rollups)
        while page.next_page_token:
            page = await billing.ListRollups(
                bpb.ListRollupsRequest(page_size=2, page_token=page.next_page_token), metadata=analyst
            )
            rollups.extend(page.rollups)
        assert len(rollups) == 4  # 2 models x 2 features, one day
        assert sum(r.request_count for r in rollups) == 60
        assert sum(r.cost.amount_micros for r in rollups) == sum(r.cost.amount_micros for r in requests)
        assert sum(r.estimated_request_count for r in rollups) == sum(
            1 for r in requests if r.usage.estimated
        )
        assert [(r.model, r.feature) for r in rollups] == sorted((r.model, r.feature) for r in rollups)

        preview = (
            await billing.GetInvoicePreview(bpb.GetInvoicePreviewRequest(), metadata=analyst)
        ).invoice_preview
        assert preview.event_count == 60
        assert preview.total.amount_micros == sum(r.cost.amount_micros for r in requests)
        assert preview.total.currency_code == "USD"
        assert sum(line.prompt_tokens for line in preview.lines) == sum(
            r.usage.prompt_tokens for r in requests
        )
        assert sum(line.cached_tokens for line in preview.lines) == sum(
            r.usage.cached_tokens for r in requests
        )

        usage = await metering.GetUsage(
            mpb.GetUsageRequest(
                start_time=timestamp_pb2.Timestamp(seconds=0),
                group_by=[USAGE_DIMENSION_MODEL, USAGE_DIMENSION_FEATURE],
            ),
            metadata=analyst,
        )
        assert {(a.model, a.feature, a.request_count) for a in usage.aggregates} == {
            (r.model, r.feature, r.request_count) for r in rollups
        }

        # Without usage.read: billing refuses, GetUsage shows only the caller's own usage.
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await billing.ListRollups(bpb.ListRollupsRequest(), metadata=caller(keys, tenant, "frank"))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_details(denied.value).reason == "PERMISSION_MISSING"
        own = await metering.GetUsage(
            mpb.GetUsageRequest(start_time=timestamp_pb2.Timestamp(seconds=0)),
            metadata=caller(keys, tenant, "frank"),
        )
        assert own.total.request_count == 0
        with pytest.raises(grpc.aio.AioRpcError) as other_user:
            await metering.GetUsage(
                mpb.GetUsageRequest(start_time=timestamp_pb2.Timestamp(seconds=0), user_id="dave"),
                metadata=caller(keys, tenant, "frank"),
            )
        assert other_user.value.code() == grpc.StatusCode.PERMISSION_DENIED

        noon = timestamp_pb2.Timestamp()
        noon.FromDatetime(datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0))
        with pytest.raises(grpc.aio.AioRpcError) as bad_period:
            await billing.GetInvoicePreview(bpb.GetInvoicePreviewRequest(start_time=noon), metadata=analyst)
        assert error_details(bad_period.value).reason == "PERIOD_INVALID"
        # A page token serves only the query and the caller it came from.
        assert first_token
        other_analyst = caller(keys, tenant, "grace", roles=("analyst",))
        for request, who in (
            (bpb.ListRollupsRequest(page_size=2, model="m-a", page_token=first_token), analyst),
            (bpb.ListRollupsRequest(page_size=2, start_time=noon, page_token=first_token), analyst),
            (bpb.ListRollupsRequest(page_size=2, page_token=first_token), other_analyst),
            (bpb.ListRollupsRequest(page_token="eA=="), analyst),
        ):
            assert await refusal(billing.ListRollups(request, metadata=who)) == PAGE_TOKEN_REFUSED, request
