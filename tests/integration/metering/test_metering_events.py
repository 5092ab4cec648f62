"""Expiry of unsettled reservations, and the UsageEvent each settlement publishes through the outbox."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import nats
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from parapet.auth.v1 import tenant_policy_pb2 as tp
from parapet.embedded import EmbeddedPostgres
from parapet.kit.errors import error_details
from parapet.kit.testing import TestKeys, running
from parapet.metering.v1 import metering_service_pb2 as pb
from parapet.metering.v1 import metering_service_pb2_grpc, reservation_pb2
from parapet.usage.v1 import token_usage_pb2, usage_event_pb2
from services.metering.app import APP
from tests.integration.metering.conftest import Metering
from tests.integration.metering.metering_support import (
    caller,
    metering_settings,
    new_tenant,
    reader_policy,
    usd,
    write_policies,
)


async def test_unsettled_reservation_expires_frees_budget_and_can_still_settle(
    metering: Metering, keys: TestKeys
) -> None:
    tenant = new_tenant()
    budget = tp.Budget(
        budget_id="d", scope=tp.BUDGET_SCOPE_TENANT, window=tp.BUDGET_WINDOW_DAY, token_limit=1000
    )
    write_policies(metering.policy_file, {tenant: reader_policy(budgets=[budget])})
    who = caller(keys, tenant, roles=("analyst",))  # usage.read: a tenant budget's figures are the tenant's
    short = duration_pb2.Duration(nanos=300_000_000)
    first = await metering.stub.Reserve(
        pb.ReserveRequest(request_id="x1", estimated_tokens=900, ttl=short), metadata=who
    )
    deadline = time.monotonic() + 15
    while True:  # the sweeper frees the hold once the ttl has passed
        try:
            await metering.stub.Reserve(
                pb.ReserveRequest(request_id="x2", estimated_tokens=900), metadata=who
            )
            break
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() < deadline, "reservation never expired"
            await asyncio.sleep(0.1)
    released = await metering.stub.Release(
        pb.ReleaseRequest(reservation_id=first.reservation.reservation_id), metadata=who
    )
    assert released.reservation.state == reservation_pb2.RESERVATION_STATE_EXPIRED
    # The request behind the expired reservation did run: its usage still settles and counts.
    settled = await metering.stub.Settle(
        pb.SettleRequest(
            reservation_id=first.reservation.reservation_id,
            request_id="x1",
            usage=token_usage_pb2.TokenUsage(prompt_tokens=60, completion_tokens=40),
        ),
        metadata=who,
    )
    assert settled.reservation.state == reservation_pb2.RESERVATION_STATE_SETTLED
    usage = await metering.stub.GetUsage(
        pb.GetUsageRequest(start_time=timestamp_pb2.Timestamp(seconds=0)), metadata=who
    )
    assert usage.budgets[0].used_tokens == 900 + 100


async def test_invalid_requests_get_field_violations(metering: Metering, keys: TestKeys) -> None:
    who = caller(keys, new_tenant())
    cases = [
        (metering.stub.Reserve, pb.ReserveRequest(), "request_id"),
        (metering.stub.Reserve, pb.ReserveRequest(request_id="r", estimated_tokens=-1), "estimated_tokens"),
        (
            metering.stub.Reserve,
            pb.ReserveRequest(request_id="r", ttl=duration_pb2.Duration(seconds=7200)),
            "ttl",
        ),
        (metering.stub.Settle, pb.SettleRequest(request_id="r", reservation_id="nope"), "reservation_id"),
        (
            metering.stub.Settle,
            pb.SettleRequest(
                request_id="r", usage=token_usage_pb2.TokenUsage(prompt_tokens=1, cached_tokens=2)
            ),
            "usage.cached_tokens",
        ),
        (metering.stub.Settle, pb.SettleRequest(request_id="r", labels={"k": "v" * 300}), "labels['k']"),
        (metering.stub.Release, pb.ReleaseRequest(), "reservation_id"),
        (metering.stub.GetUsage, pb.GetUsageRequest(), "start_time"),
    ]
    for method, request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await method(request, metadata=who)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        details = error_details(raised.value)
        assert details.bad_request is not None and details.bad_request.field_violations[0].field == field
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await metering.stub.Release(
            pb.ReleaseRequest(reservation_id="6f1c7d5e-8a3b-4c2d-9e1f-0a1b2c3d4e5f"), metadata=who
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_settlement_publishes_a_usage_event_with_cloudevents_headers(
    metering: Metering, keys: TestKeys, nats_url: str
) -> None:
    tenant = new_tenant()
    who = caller(keys, tenant, "carol", api_key_id="key-7")
    client = await nats.connect(nats_url)
    try:
        subscription = await client.jetstream().pull_subscribe(f"parapet.usage.v1.{tenant}", stream="USAGE")
        settled = await metering.stub.Settle(
            pb.SettleRequest(
                request_id="ev-1",
                feature="search",
                model="claude-haiku",
                provider="anthropic",
                usage=token_usage_pb2.TokenUsage(prompt_tokens=11, completion_tokens=7, cached_tokens=3),
                cost=usd(4321),
                labels={"team": "blue"},
                complete_time=timestamp_pb2.Timestamp(seconds=1_790_000_000),
            ),
            metadata=who,
        )
        (message,) = await subscription.fetch(1, timeout=10)
        await message.ack()
    finally:
        await client.close()
    event = usage_event_pb2.UsageEvent.FromString(message.data)
    assert event.event_id == settled.usage_event_id
    assert (event.tenant_id, event.user_id, event.api_key_id) == (tenant, "carol", "key-7")
    assert (event.model, event.provider, event.feature, event.request_id) == (
        "claude-haiku",
        "anthropic",
        "search",
        "ev-1",
    )
    assert (event.usage.prompt_tokens, event.usage.completion_tokens, event.usage.cached_tokens) == (11, 7, 3)
    assert (event.cost.currency_code, event.cost.amount_micros) == ("USD", 4321)
    assert dict(event.labels) == {"team": "blue"} and event.occur_time.seconds == 1_790_000_000
    headers = message.headers or {}
    assert headers["Nats-Msg-Id"] == headers["ce-id"] == event.event_id
    assert headers["ce-specversion"] == "1.0" and headers["ce-source"] == "/parapet/metering"
    assert headers["ce-type"] == "dev.parapet.usage.v1.UsageEvent" and headers["ce-subject"] == tenant
    assert headers["ce-time"] == "2026-09-21T14:13:20Z" and headers["content-type"] == "application/protobuf"


async def test_settle_against_an_unknown_reservation_still_records_the_usage(
    metering: Metering, keys: TestKeys
) -> None:
    tenant = new_tenant()
    budget = tp.Budget(
        budget_id="d", scope=tp.BUDGET_SCOPE_TENANT, window=tp.BUDGET_WINDOW_DAY, token_limit=1000
    )
    write_policies(metering.policy_file, {tenant: reader_policy(budgets=[budget])})
    who = caller(keys, tenant, roles=("analyst",))  # usage.read: a tenant budget's figures are the tenant's
    settled = await metering.stub.Settle(
        pb.SettleRequest(
            reservation_id="6f1c7d5e-8a3b-4c2d-9e1f-0a1b2c3d4e5f",  # e.g. a hold a database crash forgot
            request_id="lost-1",
            usage=token_usage_pb2.TokenUsage(prompt_tokens=30, completion_tokens=20),
        ),
        metadata=who,
    )
    assert settled.usage_event_id and not settled.HasField("reservation")
    usage = await metering.stub.GetUsage(
        pb.GetUsageRequest(start_time=timestamp_pb2.Timestamp(seconds=0)), metadata=who
    )
    assert usage.total.request_count == 1 and usage.budgets[0].used_tokens == 50


async def test_reserve_survives_a_database_restart(
    tmp_path: Path, keys: TestKeys, fresh_postgres: EmbeddedPostgres, nats_url: str
) -> None:
    """Reserve's pool has no pre-ping: a connection PostgreSQL dropped is replaced by the retry."""
    tenant = new_tenant()
    policy_file = write_policies(tmp_path / "policies.json", {tenant: tp.TenantPolicy()})
    settings = metering_settings(tmp_path, keys, fresh_postgres.url, nats_url, policy_file)
    async with (
        running(APP, settings) as (_server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        who = caller(keys, tenant)
        await stub.Reserve(pb.ReserveRequest(request_id="before", estimated_tokens=1), metadata=who)
        await asyncio.to_thread(fresh_postgres.stop)
        await asyncio.to_thread(fresh_postgres.start)
        after = await stub.Reserve(pb.ReserveRequest(request_id="after", estimated_tokens=1), metadata=who)
        assert after.reservation.state == reservation_pb2.RESERVATION_STATE_ACTIVE


async def test_reserve_survives_a_database_restart_with_a_full_pool(
    tmp_path: Path, keys: TestKeys, fresh_postgres: EmbeddedPostgres, nats_url: str
) -> None:
    """Every connection pooled before a restart is dead after it. Before, Reserve's retries took one after the
    other from the pool, and with more pooled connections than retries the first Reserve after the restart
    failed UNAVAILABLE (a chat refused, or let through unbudgeted)."""
    tenant = new_tenant()
    policy_file = write_policies(tmp_path / "policies.json", {tenant: tp.TenantPolicy()})
    settings = metering_settings(tmp_path, keys, fresh_postgres.url, nats_url, policy_file)
    async with (
        running(APP, settings) as (_server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        who = caller(keys, tenant)
        # Concurrent enough to leave the pool holding all of its connections.
        await asyncio.gather(
            *(
                stub.Reserve(pb.ReserveRequest(request_id=f"before-{i}", estimated_tokens=1), metadata=who)
                for i in range(40)
            )
        )
        await asyncio.to_thread(fresh_postgres.stop)
        await asyncio.to_thread(fresh_postgres.start)
        for i in range(12):
            after = await stub.Reserve(
                pb.ReserveRequest(request_id=f"after-{i}", estimated_tokens=1), metadata=who
            )
            assert after.reservation.state == reservation_pb2.RESERVATION_STATE_ACTIVE
