"""Billing's sweeper against real PostgreSQL: processed event ids past their retention go, in bounded batches,
through the index of migration 0002; younger ids stay, and an event whose id is kept is still counted once."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from parapet.kit.database import Database
from parapet.usage.v1 import usage_event_pb2
from services.billing import pruning
from tests.integration.billing.conftest import apply_events, usage_event
from tests.integration.metering.metering_support import (
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
