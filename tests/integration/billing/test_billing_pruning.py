"""Billing's sweeper against real PostgreSQL: processed event ids past their retention go, in bounded batches,
through the index of migration 0002; younger ids stay, and an event whose id is kept is still counted once."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from nats.js.errors import NotFoundError
from sqlalchemy import text

from parapet.embedded import EmbeddedNats
from parapet.events.usage import USAGE_STREAM, subject
from parapet.kit.bus import Bus
from parapet.kit.database import Database
from parapet.kit.testing import TestKeys, running
from parapet.usage.v1 import usage_event_pb2
from services.billing import pruning
from services.billing.app import APP as BILLING
from services.metering.ledger import EVENT_SOURCE, EVENT_TYPE
from tests.integration.billing.conftest import apply_events, usage_event
from tests.integration.metering.metering_support import (
    billing_settings,
    new_tenant,
    plan_without_seqscan,
    uses_index,
)


async def _age(database: Database, events: list[usage_event_pb2.UsageEvent], by: timedelta) -> None:
    async with database.transaction() as session:
        await session.execute(
            text(
                "UPDATE processed_events SET process_time = process_time - :by "
                "WHERE event_id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"by": by, "ids": [e.event_id for e in events]},
        )


async def _kept(database: Database, events: list[usage_event_pb2.UsageEvent]) -> set[str]:
    async with database.session() as session:
        rows = await session.execute(
            text("SELECT event_id FROM processed_events WHERE event_id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": [e.event_id for e in events]},
        )
    return {str(row[0]) for row in rows}


async def test_processed_ids_past_retention_go_in_batches_and_younger_ones_still_deduplicate(
    database: Database,
) -> None:
    tenant = new_tenant()
    keep = timedelta(days=9)
    old = [usage_event(tenant, i) for i in range(7)]
    young = [usage_event(tenant, i) for i in range(7, 10)]
    assert await apply_events(database, old + young) == 10
    await _age(database, old, keep + timedelta(hours=1))
    await _age(database, young, keep - timedelta(hours=1))

    batches = []
    while (deleted := await pruning.delete_processed_ids(database, keep, batch=3)) > 0:
        batches.append(deleted)
    assert all(size <= 3 for size in batches) and sum(batches) >= len(old) and len(batches) >= 3
    assert await _kept(database, old + young) == {e.event_id for e in young}
    # A redelivery of a kept id changes nothing.
    assert await apply_events(database, young) == 0


async def test_the_prune_reads_through_the_process_time_index(database: Database) -> None:
    plan = await plan_without_seqscan(
        database, pruning.DELETE_PROCESSED, {"keep": timedelta(days=9), "batch": 100}
    )
    assert uses_index(plan, "processed_events_process_time"), plan


async def _wait(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 30
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.05)


async def test_ids_outlive_a_stream_an_operator_made_keep_messages_longer(
    tmp_path: Path,
    keys: TestKeys,
    database_url: str,
    fresh_nats: EmbeddedNats,
    policy_file: Path,
    database: Database,
) -> None:
    """The USAGE stream's limits are the operator's once it exists (`nats stream edit`; a restart keeps them,
    ``Bus.ensure_stream``). With its max age raised to 30 days, a durable created afresh (removed by an operator,
    or a new PARAPET_CONSUMER_NAME) reads a message 10 days old again, whose id the sweeper had deleted after its 9
    days: the event was counted twice."""
    tenant, other = new_tenant(), new_tenant()
    bus = await Bus.connect(fresh_nats.url)
    settings = billing_settings(
        tmp_path, keys, database_url, fresh_nats.url, policy_file, processed_event_sweep_interval_seconds=0.1
    )
    try:
        stream = await bus.ensure_stream(USAGE_STREAM)
        await bus.jetstream.update_stream(dataclasses.replace(stream, max_age=30 * 86400.0))
        event = usage_event(tenant, 1)
        await bus.publish(
            subject(tenant),
            event.SerializeToString(),
            msg_id=event.event_id,
            headers={"ce-type": EVENT_TYPE, "ce-source": EVENT_SOURCE},
        )

        async def counted() -> int:
            async with database.session() as session:
                return int(
                    (
                        await session.execute(
                            text("SELECT coalesce(sum(request_count), 0) FROM rollups WHERE tenant_id = :t"),
                            {"t": tenant},
                        )
                    ).scalar_one()
                )

        async def drained() -> bool:
            try:
                info = await bus.jetstream.consumer_info(USAGE_STREAM.name, settings.consumer_name)
            except NotFoundError:  # the service has not created its durable yet
                return False
            return bool(
                info.delivered.stream_seq >= 1 and info.num_pending == 0 and info.num_ack_pending == 0
            )

        async with running(BILLING, settings):
            await _wait(lambda: _equals(counted(), 1), "the event was not counted")
            await _wait(drained, "the event was not acknowledged")
            # Ten days pass: the id is past billing's 9 days, the message well inside the stream's 30. A second id,
            # 100 days old, shows when a sweep has run since.
            old = usage_event(other, 2)
            assert await apply_events(database, [old]) == 1
            await _age(database, [event], timedelta(days=10))
            await _age(database, [old], timedelta(days=100))
            await _wait(lambda: _equals(_kept_count(database, [old]), 0), "no sweep ran")
        await bus.jetstream.delete_consumer(USAGE_STREAM.name, settings.consumer_name)
        async with running(BILLING, settings):  # creates the durable again, which delivers the whole stream
            await _wait(drained, "the stream was not read again")
            assert await counted() == 1, "a message the stream still held was counted again"
    finally:
        await bus.close()


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def _kept_count(database: Database, events: list[usage_event_pb2.UsageEvent]) -> int:
    return len(await _kept(database, events))
