"""Erase of a user with many interactions holds no audit write up. It once took the tenant's head lock before
rewriting all the user's rows and kept it to the commit: that tenant's Record calls waited to their deadlines,
and so did the stream consumer, whose one transaction per batch locks every batch tenant's head, so every
tenant's stream writes stalled. Now the head lock covers only the erasure marker's commit, and the bodies are
cleared in bounded batches of their own.

The Erase is held mid-way without mocks: a transaction of the test locks the user's newest row, which the last
batch must rewrite, and the test watches PostgreSQL until Erase's statement waits for that lock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import grpc.aio
import pytest
from sqlalchemy import text

from parapet.audit.v1 import audit_service_pb2
from parapet.events.audit import publish
from parapet.kit.bus import Bus
from parapet.kit.database import Database
from services.audit.canonical import prepare
from services.audit.retention import ERASE_BATCH
from services.audit.store import append
from tests.integration.audit.conftest import Audit, interaction, new_tenant, wait_for_stored

ROWS_OF_USER = (
    2 * ERASE_BATCH + 500
)  # three batches: the first two commit before the held row stops the third
SOURCE = "/parapet/gateway"


async def _store_many(database: Database, tenant: str, user: str, count: int) -> None:
    """``count`` interactions of ``user``, with bodies, chained in one append."""
    await append(database, tenant, [prepare(interaction(user), tenant) for _ in range(count)])


async def _with_bodies(database: Database, tenant: str, user: str) -> int:
    """How many of ``user``'s interactions still hold a body."""
    async with database.transaction() as session:
        value = await session.execute(
            text(
                "SELECT count(*) FROM records WHERE tenant_id = :t AND user_id = :u AND kind = 'interaction'"
                " AND (prompt IS NOT NULL OR response IS NOT NULL)"
            ),
            {"t": tenant, "u": user},
        )
        return int(value.scalar_one())


@asynccontextmanager
async def _newest_row_held(database: Database, tenant: str, user: str) -> AsyncIterator[int]:
    """Lock ``user``'s newest row in a transaction of the test's own until the block ends; yields its backend."""
    async with database.transaction() as session:
        await session.execute(
            text(
                "SELECT 1 FROM records WHERE tenant_id = :t AND user_id = :u"
                " ORDER BY create_time DESC, sequence DESC LIMIT 1 FOR UPDATE"
            ),
            {"t": tenant, "u": user},
        )
        yield int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def _waiting_for(database: Database, holder: int, within: float = 30.0) -> int:
    """The backend waiting for a lock ``holder`` holds, once one does (fails after ``within`` seconds)."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        async with database.transaction() as session:
            waiter = (
                await session.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE CAST(:h AS integer) = ANY(pg_blocking_pids(pid))"
                    ),
                    {"h": holder},
                )
            ).scalar()
        if waiter is not None:
            return int(waiter)
        await asyncio.sleep(0.05)
    raise AssertionError("Erase never reached the held row")


def _erase(audit: Audit, tenant: str, user: str) -> asyncio.Task[audit_service_pb2.EraseResponse]:
    request = audit_service_pb2.EraseRequest(user_id=user, reason="ticket 9")
    return asyncio.ensure_future(audit.stub.Erase(request, metadata=audit.metadata(tenant), timeout=120))


async def test_records_of_every_tenant_are_stored_while_a_long_erase_is_under_way(
    audit: Audit, nats_url: str
) -> None:
    tenant, other = new_tenant(), new_tenant()
    await _store_many(audit.database, tenant, "erin", ROWS_OF_USER)
    bus = await Bus.connect(nats_url)
    try:
        async with _newest_row_held(audit.database, tenant, "erin") as holder:
            erasing = _erase(audit, tenant, "erin")
            waiter = await _waiting_for(audit.database, holder)
            # The erasing tenant's own Record (10 s deadline): another user's, and one of the erased user's made
            # before the erasure, which the committed marker strips.
            frank = interaction("frank", tenant_id=tenant)
            earlier = interaction("erin", tenant_id=tenant, created=datetime.now(UTC) - timedelta(minutes=1))
            await audit.record(tenant, frank)
            await audit.record(tenant, earlier)
            # The stream: the consumer stores batches one after another, so a record of the erasing tenant first
            # would hold the other tenant's behind it, in its batch or the next.
            await publish(bus, interaction("frank", tenant_id=tenant), source=SOURCE)
            await publish(bus, interaction("gina", tenant_id=other), source=SOURCE)
            assert await wait_for_stored(audit.database, other, 1) == 1
            assert await wait_for_stored(audit.database, tenant, ROWS_OF_USER + 3) == ROWS_OF_USER + 3
            # All of that while Erase still waits on the held row.
            assert not erasing.done()
            assert await _waiting_for(audit.database, holder) == waiter
        erased = await erasing
    finally:
        await bus.close()
    # The earlier record was stored without its bodies, so this Erase did not erase it: not counted.
    assert erased.erased_count == ROWS_OF_USER
    assert await _with_bodies(audit.database, tenant, "erin") == 0
    assert await _with_bodies(audit.database, tenant, "frank") == 2
    result = await audit.verify(tenant)
    assert (result.intact, result.records_verified) == (
        True,
        ROWS_OF_USER + 4,
    )  # and the erasure's AdminAction


async def test_an_erase_that_fails_part_way_is_finished_by_a_retry(audit: Audit) -> None:
    tenant = new_tenant()
    await _store_many(audit.database, tenant, "erin", ROWS_OF_USER)
    async with _newest_row_held(audit.database, tenant, "erin") as holder:
        erasing = _erase(audit, tenant, "erin")
        waiter = await _waiting_for(audit.database, holder)
        async with audit.database.transaction() as session:  # a real failure of Erase's statement
            await session.execute(text("SELECT pg_cancel_backend(:p)"), {"p": waiter})
        with pytest.raises(grpc.aio.AioRpcError):
            await erasing
    left = await _with_bodies(audit.database, tenant, "erin")
    assert 0 < left < ROWS_OF_USER  # the batches before the failure stand
    retried = await _erase(audit, tenant, "erin")
    assert retried.erased_count == left
    assert await _with_bodies(audit.database, tenant, "erin") == 0
    result = await audit.verify(tenant)
    assert (result.intact, result.records_verified) == (True, ROWS_OF_USER + 1)


async def test_an_erase_whose_caller_leaves_part_way_still_finishes_and_is_recorded(audit: Audit) -> None:
    """Bodies go in batches before the erasure joins the chain: a caller leaving (a deadline, a cancel) in
    between once left bodies erased with no record of who erased them or why."""
    tenant = new_tenant()
    await _store_many(audit.database, tenant, "erin", ROWS_OF_USER)
    async with _newest_row_held(audit.database, tenant, "erin") as holder:
        erasing = _erase(audit, tenant, "erin")
        await _waiting_for(audit.database, holder)
        erasing.cancel()  # the caller leaves while the last batch waits
        with pytest.raises(asyncio.CancelledError):
            await erasing
    deadline = asyncio.get_running_loop().time() + 30
    while (result := await audit.verify(tenant)).records_verified < ROWS_OF_USER + 1:
        assert asyncio.get_running_loop().time() < deadline, "the erasure was never recorded"
        await asyncio.sleep(0.1)
    assert result.intact and result.records_verified == ROWS_OF_USER + 1
    assert await _with_bodies(audit.database, tenant, "erin") == 0
