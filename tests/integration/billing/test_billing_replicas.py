"""Two billing replicas applying overlapping batches at once, against real PostgreSQL: no deadlock, each event once.

JetStream hands a message to one replica, but redelivers it to another when the first does not acknowledge it within
``ack_wait`` (a slow database, a pause), so two replicas can hold the same events in different orders. Each batch
recorded its event ids in the order they came: replica A holding one id and waiting for another that replica B
holds while B waits for A's is a deadlock, and PostgreSQL aborts one of the batches (redelivered later, an ERROR
logged), which happens most when the database is already slow."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import text

from parapet.kit import timeouts
from parapet.kit.database import Database
from tests.integration.billing.conftest import apply_events, usage_event
from tests.integration.metering.metering_support import new_tenant


async def _waiting(database: Database, count: int) -> None:
    """Until ``count`` transactions wait for a lock while recording event ids."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND query LIKE '%INSERT INTO processed_events%'"
    )

    async def reached() -> None:
        while True:
            async with database.session() as session:
                if (await session.execute(query)).scalar_one() >= count:
                    return
            await asyncio.sleep(0.02)

    await timeouts.within(10, reached())


async def test_overlapping_batches_in_other_orders_never_deadlock(database: Database) -> None:
    tenant = new_tenant()
    first, second, gate = sorted(str(uuid.uuid4()) for _ in range(3))
    events = {}
    for i, event_id in enumerate((first, second, gate)):
        event = usage_event(tenant, i + 1)
        event.event_id = event_id
        events[event_id] = event
    async with database.transaction() as holder:
        # A third transaction holds `gate` so that both batches are caught part-way, as they would be by chance.
        await holder.execute(
            text("INSERT INTO processed_events (event_id, tenant_id) VALUES (CAST(:id AS uuid), :t)"),
            {"id": gate, "t": tenant},
        )
        one = asyncio.create_task(apply_events(database, [events[first], events[gate], events[second]]))
        await _waiting(database, 1)
        other = asyncio.create_task(apply_events(database, [events[second], events[first]]))
        await _waiting(database, 2)
        await holder.rollback()  # `gate` is free: the first batch goes on to the id the second holds, or not
    results = await asyncio.gather(one, other, return_exceptions=True)
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert sorted(r for r in results if isinstance(r, int)) == [
        0,
        3,
    ]  # each event counted once, by one of the two
    async with database.session() as session:
        count = (
            await session.execute(
                text("SELECT sum(request_count) FROM rollups WHERE tenant_id = :t"), {"t": tenant}
            )
        ).scalar_one()
    assert count == 3
