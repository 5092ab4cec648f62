"""ReplayUsageEvents with real NATS and PostgreSQL: after NATS lost its store with events billing had not yet
consumed, a replay makes billing's rollups equal the ledger again, exactly, and every further replay (inside
JetStream's duplicate window or past it) leaves them exact."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.protobuf import timestamp_pb2
from grpc_status import rpc_status
from sqlalchemy import text

from parapet.embedded import EmbeddedNats
from parapet.events.usage import USAGE_STREAM
from parapet.kit import timeouts
from parapet.kit.bus import Bus
from parapet.kit.database import Database
from parapet.kit.identity import Principal
from parapet.kit.testing import TestKeys, running
from parapet.metering.v1 import metering_service_pb2 as mpb
from parapet.metering.v1 import metering_service_pb2_grpc
from services.billing.app import APP as BILLING
from services.metering.app import APP as METERING
from tests.integration.metering.metering_support import (
    PLATFORM,
    billing_settings,
    caller,
    ledger_and_rollups,
    metering_settings,
    new_tenant,
    operator,
    platform_policy,
    settle,
    wait_until_rollups_match,
    write_policies,
)

Stub = metering_service_pb2_grpc.MeteringServiceStub


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


async def _database_now(database: Database) -> datetime:
    async with database.session() as session:
        now: datetime = (await session.execute(text("SELECT now()"))).scalar_one()
    return now


async def _wait_until_sent(database: Database, event_ids: Sequence[str]) -> None:
    """Until the relay has had JetStream acknowledge every one of ``event_ids`` (their rows marked sent)."""
    while True:
        async with database.session() as session:
            unsent = (
                await session.execute(
                    text(
                        "SELECT count(*) FROM outbox WHERE event_id = ANY(CAST(:ids AS uuid[])) "
                        "AND sent_time IS NULL"
                    ),
                    {"ids": list(event_ids)},
                )
            ).scalar_one()
        if unsent == 0:
            return
        await asyncio.sleep(0.05)


async def _lose_store(nats: EmbeddedNats) -> None:
    """NATS restarted without its JetStream store (an emptyDir): every stream, message and consumer gone."""
    await asyncio.to_thread(nats.stop)
    await asyncio.to_thread(shutil.rmtree, nats.store_dir)
    await asyncio.to_thread(nats.start)


async def _stored(bus: Bus, tenant: str) -> int:
    """Messages the USAGE stream holds on ``tenant``'s subject."""
    subject = f"parapet.usage.v1.{tenant}"
    info = await bus.jetstream.stream_info(USAGE_STREAM.name, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


async def _wait_until_consumed(bus: Bus, tenant: str, expected: int) -> None:
    """Until the stream holds ``expected`` messages of ``tenant`` and billing's durable has acknowledged every
    message of the stream: each was delivered to billing and applied (or found applied before)."""
    while True:
        if await _stored(bus, tenant) >= expected:
            consumer = await bus.jetstream.consumer_info(USAGE_STREAM.name, "billing")
            stream = await bus.jetstream.stream_info(USAGE_STREAM.name)
            if (
                consumer.num_pending == 0
                and consumer.num_ack_pending == 0
                and consumer.ack_floor is not None
                and (consumer.ack_floor.stream_seq or 0) >= (stream.state.last_seq or 0)
            ):
                return
        await asyncio.sleep(0.1)


async def _counted(database_url: str, tenant: str) -> int:
    _ledger, rollups = await ledger_and_rollups(database_url, tenant)
    return sum(int(row[4]) for row in rollups)


async def _replay(metering: Stub, keys: TestKeys, start: datetime) -> mpb.ReplayUsageEventsResponse:
    reply: mpb.ReplayUsageEventsResponse = await metering.ReplayUsageEvents(
        mpb.ReplayUsageEventsRequest(start_time=_timestamp(start)), metadata=operator(keys)
    )
    return reply


async def test_replay_after_nats_lost_its_store_makes_rollups_equal_the_ledger_once_and_for_all(
    tmp_path: Path, keys: TestKeys, database_url: str, fresh_nats: EmbeddedNats
) -> None:
    tenant = new_tenant()
    policy_file = write_policies(tmp_path / "policies.json", {PLATFORM: platform_policy()})
    billing = billing_settings(tmp_path, keys, database_url, fresh_nats.url, policy_file)
    database = Database(database_url, "metering")
    async with AsyncExitStack() as stack:
        stack.push_async_callback(database.close)
        bus = await Bus.connect(fresh_nats.url)
        stack.push_async_callback(bus.close)
        _server, port = await stack.enter_async_context(
            running(METERING, metering_settings(tmp_path, keys, database_url, fresh_nats.url, policy_file))
        )
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        metering = Stub(channel)
        who = caller(keys, tenant)
        start = await _database_now(database)
        event_ids: list[str] = []

        async with running(BILLING, billing):
            for i in range(30):
                event_ids.append(
                    (await metering.Settle(settle(i, "m", "f", 100 + i), metadata=who)).usage_event_id
                )
            await wait_until_rollups_match(database_url, tenant, 30)
        # Billing is down: these reach the stream and are marked sent, but nobody consumes them.
        for i in range(30, 50):
            event_ids.append(
                (await metering.Settle(settle(i, "m", "f", 100 + i), metadata=who)).usage_event_id
            )
        await timeouts.within(60, _wait_until_sent(database, event_ids))
        await _lose_store(fresh_nats)

        async with running(BILLING, billing):
            # Nothing anywhere holds the 20 events any more: billing stays short of the ledger until replayed.
            assert await _counted(database_url, tenant) == 30
            reply = await _replay(metering, keys, start)
            assert reply.event_count == 50
            await wait_until_rollups_match(database_url, tenant, 50)

            # At once again: inside the 2-minute duplicate window JetStream drops the 50 republished messages.
            assert (await _replay(metering, keys, start)).event_count == 50
            await timeouts.within(60, _wait_until_sent(database, event_ids))
            await timeouts.within(60, _wait_until_consumed(bus, tenant, 50))
            assert await _stored(bus, tenant) == 50
            await wait_until_rollups_match(database_url, tenant, 50)

        # Past the duplicate window (NATS forgot the ids with its store): all 50 reach billing a second time,
        # and only billing's processed_events keeps them from counting twice.
        await _lose_store(fresh_nats)
        async with running(BILLING, billing):
            assert (await _replay(metering, keys, start)).event_count == 50
            await timeouts.within(60, _wait_until_sent(database, event_ids))
            await timeouts.within(60, _wait_until_consumed(bus, tenant, 50))
            assert await _stored(bus, tenant) == 50
            ledger, rollups = await ledger_and_rollups(database_url, tenant)
            assert rollups == ledger
            assert sum(int(row[4]) for row in rollups) == 50


async def test_replay_needs_a_platform_operator(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str
) -> None:
    tenant = new_tenant()
    policy_file = write_policies(tmp_path / "policies.json", {PLATFORM: platform_policy()})
    settings = metering_settings(tmp_path, keys, database_url, nats_url, policy_file)
    request = mpb.ReplayUsageEventsRequest(start_time=_timestamp(datetime.now(UTC) - timedelta(minutes=5)))

    def signed(principal: Principal) -> tuple[tuple[str, str], ...]:
        return keys.metadata(principal)

    refused = {
        "a tenant's admin": caller(keys, tenant, "boss", roles=("admin",)),
        "the platform tenant's admin": caller(keys, PLATFORM, "helper", roles=("admin",)),
        "platform.admin resolved in another tenant": signed(
            Principal(tenant_id=tenant, subject="x", permissions=("platform.admin",))
        ),
        "a platform-admin key scoped to usage.read": signed(
            Principal(tenant_id=PLATFORM, subject="x", roles=("platform-admin",), scopes=("usage.read",))
        ),
        "resolved permissions without platform.admin": signed(
            Principal(tenant_id=PLATFORM, subject="x", roles=("platform-admin",), permissions=("admin",))
        ),
    }
    allowed = {
        "the platform-admin role": operator(keys),
        "platform.admin resolved by auth": signed(
            Principal(tenant_id=PLATFORM, subject="op", permissions=("admin", "platform.admin"))
        ),
    }
    async with (
        running(METERING, settings) as (_server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        metering = Stub(channel)
        for who, metadata in refused.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await metering.ReplayUsageEvents(request, metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, who
            status = rpc_status.from_call(caught.value)
            assert status is not None and "platform.admin" in caught.value.details(), who
        for who, metadata in allowed.items():
            reply = await metering.ReplayUsageEvents(request, metadata=metadata)
            assert reply.HasField("earliest_start_time"), who


def _violations(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str], dict[str, str]]:
    """The reason, ErrorInfo metadata and BadRequest field violations of a refusal."""
    from google.rpc import error_details_pb2

    status = rpc_status.from_call(error)
    assert status is not None
    reason, metadata, fields = "", {}, {}
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Unpack(bad):
            fields = {v.field: v.description for v in bad.field_violations}
    return reason, metadata, fields


async def test_replay_refuses_a_start_it_cannot_honour_and_marks_nothing(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str
) -> None:
    """A start older than the outbox keeps is refused, never replayed in part: INVALID_ARGUMENT
    REPLAY_WINDOW_EXCEEDED with the earliest replayable time; no start, or one in the future, likewise."""
    tenant = new_tenant()
    policy_file = write_policies(tmp_path / "policies.json", {PLATFORM: platform_policy()})
    settings = metering_settings(
        tmp_path, keys, database_url, nats_url, policy_file, outbox_retention_seconds=3600
    )
    database = Database(database_url, "metering")
    async with (
        running(METERING, settings) as (_server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        metering = Stub(channel)
        settled = await metering.Settle(settle(1, "m", "f", 10), metadata=caller(keys, tenant))
        await timeouts.within(60, _wait_until_sent(database, [settled.usage_event_id]))
        now = datetime.now(UTC)
        cases = {
            "missing": mpb.ReplayUsageEventsRequest(),
            "future": mpb.ReplayUsageEventsRequest(start_time=_timestamp(now + timedelta(hours=1))),
            "too old": mpb.ReplayUsageEventsRequest(start_time=_timestamp(now - timedelta(hours=2))),
            "out of any calendar": mpb.ReplayUsageEventsRequest(
                start_time=timestamp_pb2.Timestamp(seconds=-(10**12))
            ),
        }
        found: dict[str, tuple[str, dict[str, str], dict[str, str]]] = {}
        for name, request in cases.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await metering.ReplayUsageEvents(request, metadata=operator(keys))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            found[name] = _violations(caught.value)
            assert "start_time" in found[name][2], (name, found[name])
        reason, metadata, fields = found["too old"]
        assert reason == "REPLAY_WINDOW_EXCEEDED"
        earliest = datetime.fromisoformat(metadata["earliest_start_time"])
        # One hour of retention, less the minute's margin against the sweeper.
        assert now - timedelta(hours=1) < earliest <= now - timedelta(minutes=58)
        assert metadata["earliest_start_time"] in fields["start_time"]
        assert {found[name][0] for name in ("missing", "future")} == {"REQUEST_INVALID"}
        async with database.session() as session:
            unsent = (
                await session.execute(
                    text("SELECT sent_time IS NULL FROM outbox WHERE event_id = CAST(:id AS uuid)"),
                    {"id": settled.usage_event_id},
                )
            ).scalar_one()
        assert unsent is False  # nothing was marked
    await database.close()


async def test_a_replay_is_recorded_in_the_operators_audit_trail_or_refused(
    tmp_path: Path, keys: TestKeys, database_url: str, fresh_nats: EmbeddedNats
) -> None:
    from parapet.audit.v1 import audit_record_pb2
    from parapet.events.audit import AUDIT_STREAM
    from parapet.events.audit import subject as audit_subject

    policy_file = write_policies(tmp_path / "policies.json", {PLATFORM: platform_policy()})
    settings = metering_settings(tmp_path, keys, database_url, fresh_nats.url, policy_file)
    database = Database(database_url, "metering")
    async with AsyncExitStack() as stack:
        stack.push_async_callback(database.close)
        bus = await Bus.connect(fresh_nats.url)
        stack.push_async_callback(bus.close)
        _server, port = await stack.enter_async_context(running(METERING, settings))
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        metering = Stub(channel)
        start = await _database_now(database) - timedelta(minutes=1)
        reply = await _replay(metering, keys, start)

        stored = await bus.jetstream.get_last_msg(AUDIT_STREAM.name, audit_subject(PLATFORM))
        record = audit_record_pb2.AuditRecord.FromString(stored.data or b"")
        action = record.admin_action
        assert record.tenant_id == PLATFORM
        assert action.method == "/parapet.metering.v1.MeteringService/ReplayUsageEvents"
        assert action.actor.tenant_id == PLATFORM and action.actor.subject
        assert dict(action.attributes) == {
            "start_time": start.isoformat(),
            "event_count": str(reply.event_count),
        }

        # With NATS down the replay's record cannot be written: the call says so instead of succeeding
        # unrecorded (the marked rows are published once NATS is back; running the replay again records it).
        await asyncio.to_thread(fresh_nats.stop)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _replay(metering, keys, start)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert _violations(caught.value)[0] == "AUDIT_UNAVAILABLE"
        finally:
            await asyncio.to_thread(fresh_nats.start)
