"""The sweeper's deletes against real PostgreSQL: ended reservations, sent outbox rows and budget counters of long
ended windows past their retention go, in bounded batches, and nothing else does; the indexes of migrations 0003
and 0004 serve the deletes and the replay while the relay's read of unsent rows keeps its own; a Settle that comes
after its reservation was deleted still counts once."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from sqlalchemy import text

from parapet.kit.database import Database
from parapet.kit.testing import TestKeys, running
from parapet.metering.v1 import metering_service_pb2 as mpb
from parapet.metering.v1 import metering_service_pb2_grpc
from services.metering import pruning, replay
from services.metering.app import APP as METERING
from services.metering.limits import day_start, month_start
from services.metering.relay import UNSENT_BATCH
from services.metering.settings import MeteringSettings
from tests.integration.metering.metering_support import (
    caller,
    metering_settings,
    migrated_database,
    new_tenant,
    plan_without_seqscan,
    settle,
    uses_index,
)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with migrated_database(database_url, "metering") as database:
        yield database


async def _execute(database: Database, sql: str, params: dict[str, Any]) -> None:
    async with database.transaction() as session:
        await session.execute(text(sql), params)


async def _add_reservation(database: Database, tenant: str, state: str, ended_ago: timedelta | None) -> str:
    """A reservation of ``tenant`` in ``state``, ended ``ended_ago`` (None: not ended)."""
    reservation_id = str(uuid.uuid4())
    await _execute(
        database,
        """
        INSERT INTO reservations (reservation_id, tenant_id, request_id, user_id, state, reserved_tokens,
            reserved_micros, currency_code, holds, create_time, expire_time, end_time)
        VALUES (CAST(:id AS uuid), :tenant, :request, 'u', :state, 10, 0, 'USD', CAST('[]' AS jsonb),
            now() - interval '30 days', now() - interval '29 days',
            CASE WHEN CAST(:ago AS interval) IS NULL THEN NULL ELSE now() - CAST(:ago AS interval) END)
        """,
        {
            "id": reservation_id,
            "tenant": tenant,
            "request": f"r-{reservation_id}",
            "state": state,
            "ago": ended_ago,
        },
    )
    return reservation_id


async def _remaining(database: Database, table: str, key: str, ids: list[str]) -> set[str]:
    async with database.session() as session:
        rows = await session.execute(
            text(f"SELECT {key} FROM {table} WHERE {key} = ANY(CAST(:ids AS uuid[]))"), {"ids": ids}
        )
    return {str(row[0]) for row in rows}


async def test_ended_reservations_past_retention_go_in_batches_and_nothing_else(database: Database) -> None:
    tenant = new_tenant()
    week = timedelta(days=7)
    old = [
        await _add_reservation(database, tenant, state, week + timedelta(hours=1))
        for state in ("settled", "released", "expired") * 3
    ]
    kept = [
        await _add_reservation(database, tenant, "settled", week - timedelta(hours=1)),
        await _add_reservation(database, tenant, "expired", timedelta(minutes=1)),
        # Active, long past its expiry and never ended: the expiry sweep's to end, never deleted here.
        await _add_reservation(database, tenant, "active", None),
    ]
    batches = []
    while (deleted := await pruning.delete_ended_reservations(database, week, batch=4)) > 0:
        batches.append(deleted)
    assert all(size <= 4 for size in batches) and sum(batches) >= len(old)
    assert len(batches) >= 3  # 9 rows of ours in batches of at most 4
    assert await _remaining(database, "reservations", "reservation_id", old + kept) == set(kept)


async def _add_outbox_row(database: Database, tenant: str, *, sent_ago: timedelta | None) -> str:
    """An outbox row settled a day before it was sent ``sent_ago`` (None: unsent, settled 3 days ago)."""
    event_id = str(uuid.uuid4())
    await _execute(
        database,
        """
        INSERT INTO outbox (event_id, subject, payload, headers, create_time, sent_time)
        VALUES (CAST(:id AS uuid), :subject, '\\x00'::bytea, CAST(:headers AS jsonb),
            now() - coalesce(CAST(:ago AS interval), interval '2 days') - interval '1 day',
            now() - CAST(:ago AS interval))
        """,
        {
            "id": event_id,
            "subject": f"parapet.usage.v1.{tenant}",
            "headers": json.dumps({}),
            "ago": sent_ago,
        },
    )
    return event_id


async def test_sent_outbox_rows_past_retention_go_in_batches_and_unsent_ones_stay(database: Database) -> None:
    tenant = new_tenant()
    day = timedelta(days=1)
    old = [await _add_outbox_row(database, tenant, sent_ago=day + timedelta(minutes=5)) for _ in range(7)]
    kept = [
        await _add_outbox_row(database, tenant, sent_ago=day - timedelta(minutes=5)),
        await _add_outbox_row(database, tenant, sent_ago=None),  # unsent, however old: it must still go out
    ]
    try:
        batches = []
        while (deleted := await pruning.delete_sent_outbox(database, day, batch=3)) > 0:
            batches.append(deleted)
        assert all(size <= 3 for size in batches) and sum(batches) >= len(old) and len(batches) >= 3
        assert await _remaining(database, "outbox", "event_id", old + kept) == set(kept)
    finally:
        # The unsent row is no event: later tests' relays must not publish it.
        await _execute(
            database, "DELETE FROM outbox WHERE event_id = ANY(CAST(:ids AS uuid[]))", {"ids": kept}
        )


async def test_the_indexes_serve_the_sweeper_the_replay_and_the_relay(database: Database) -> None:
    day = timedelta(days=1)
    now_ish = {"after_time": "2026-01-01T00:00:00Z", "after_id": 0, "began": "2026-01-02T00:00:00Z"}
    plans = {
        "outbox_sent": [
            await plan_without_seqscan(database, pruning.DELETE_SENT_OUTBOX, {"keep": day, "batch": 100}),
            await plan_without_seqscan(
                database, replay.MARK_BATCH, {**now_ish, "start": "2026-01-01T00:00:00Z", "batch": 100}
            ),
        ],
        "reservations_ended": [
            await plan_without_seqscan(
                database, pruning.DELETE_ENDED_RESERVATIONS, {"keep": day, "batch": 100}
            )
        ],
        "outbox_unsent": [await plan_without_seqscan(database, UNSENT_BATCH, {"batch": 500})],
    }
    for index, found in plans.items():
        for plan in found:
            assert uses_index(plan, index), plan
    # The relay's read of unsent rows is not drawn to the new index of sent rows.
    assert "outbox_sent" not in plans["outbox_unsent"][0]


async def test_a_settle_after_its_reservation_was_deleted_still_counts_once(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str, database: Database
) -> None:
    """Past the retention a Settle (a gateway's queued settlement after a very long metering outage) is
    charged once, keyed by request_id, to the current windows; Release answers NOT_FOUND."""
    tenant = new_tenant()
    policy_file = tmp_path / "policies.json"
    policy_file.write_text("{}")
    who = caller(keys, tenant)
    async with (
        running(METERING, metering_settings(tmp_path, keys, database_url, nats_url, policy_file)) as (
            _s,
            port,
        ),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        metering = metering_service_pb2_grpc.MeteringServiceStub(channel)
        reserved = await metering.Reserve(
            mpb.ReserveRequest(request_id="s-7", estimated_tokens=100), metadata=who
        )
        reservation_id = reserved.reservation.reservation_id
        await metering.Release(mpb.ReleaseRequest(reservation_id=reservation_id), metadata=who)
        await _execute(
            database,
            "UPDATE reservations SET end_time = now() - interval '8 days' WHERE reservation_id = CAST(:id AS uuid)",
            {"id": reservation_id},
        )
        assert await pruning.delete_ended_reservations(database, timedelta(days=7)) >= 1
        assert not await _remaining(database, "reservations", "reservation_id", [reservation_id])

        late = settle(7, "m", "f", 500)
        late.reservation_id = reservation_id
        first = await metering.Settle(late, metadata=who)
        again = await metering.Settle(late, metadata=who)
        assert again.usage_event_id == first.usage_event_id
        async with database.session() as session:
            rows = (
                await session.execute(
                    text("SELECT count(*), sum(prompt_tokens) FROM usage_ledger WHERE tenant_id = :t"),
                    {"t": tenant},
                )
            ).one()
        assert tuple(rows) == (1, late.usage.prompt_tokens)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await metering.Release(mpb.ReleaseRequest(reservation_id=reservation_id), metadata=who)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def _add_counter(database: Database, tenant: str, budget_id: str, window_start: datetime) -> None:
    await _execute(
        database,
        """
        INSERT INTO budget_counters (tenant_id, budget_id, scope_key, unit, window_start, limit_value, used)
        VALUES (:tenant, :budget, :scope, 'tokens', :start, 1000, 10)
        """,
        {"tenant": tenant, "budget": budget_id, "scope": f"tenant:{tenant}", "start": window_start},
    )


async def _counters(database: Database, tenant: str) -> set[str]:
    async with database.session() as session:
        rows = await session.execute(
            text("SELECT budget_id FROM budget_counters WHERE tenant_id = :t"), {"t": tenant}
        )
    return {str(row[0]) for row in rows}


async def test_budget_counters_of_windows_long_ended_go_in_batches_from_two_replicas_and_current_ones_stay(
    database: Database,
) -> None:
    """Before, a row per budget, subject and day or month was kept for ever."""
    tenant = new_tenant()
    keep = pruning.budget_counter_retention(MeteringSettings())
    now = datetime.now(UTC)
    old = {f"old-{i}": now - keep - timedelta(hours=1, days=i * 40) for i in range(7)}
    kept = {
        "today": day_start(now),
        "this-month": month_start(now),
        # Its window may have ended, but not long enough ago: a late Settle may still charge it.
        "inside-retention": now - keep + timedelta(hours=1),
    }
    for budget_id, start in {**old, **kept}.items():
        await _add_counter(database, tenant, budget_id, start)

    async def replica() -> list[int]:
        batches = []
        while (deleted := await pruning.delete_ended_budget_counters(database, keep, batch=2)) > 0:
            batches.append(deleted)
        return batches

    # Two replicas' sweepers at once: SKIP LOCKED, so neither waits on the other's batch nor fails.
    first, second = await asyncio.gather(replica(), replica())
    assert all(size <= 2 for size in first + second) and sum(first + second) >= len(old)
    assert await _counters(database, tenant) == set(kept)


def test_a_budget_counter_is_kept_until_no_reservation_can_charge_it() -> None:
    """Its window lasts at most a calendar month (31 days); a reservation made in it holds it at most the
    longest ttl, and a late Settle of that reservation charges it while the reservation is kept."""
    settings = MeteringSettings(reservation_max_ttl_seconds=7200, reservation_retention_seconds=3 * 86400)
    assert pruning.budget_counter_retention(settings) == timedelta(days=31 + 3, hours=2)
    assert pruning.budget_counter_retention(MeteringSettings()) == timedelta(days=31 + 7, hours=1)


async def test_the_budget_counter_delete_reads_its_index(database: Database) -> None:
    plan = await plan_without_seqscan(
        database, pruning.DELETE_ENDED_BUDGET_COUNTERS, {"keep": timedelta(days=38), "batch": 100}
    )
    assert uses_index(plan, "budget_counters_window"), plan


async def test_the_running_service_prunes_old_budget_counters(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str, database: Database
) -> None:
    """The sweeper deletes them: no call is needed, and a current window's counter stays."""
    tenant = new_tenant()
    policy_file = tmp_path / "policies.json"
    policy_file.write_text("{}")
    settings = metering_settings(tmp_path, keys, database_url, nats_url, policy_file)
    now = datetime.now(UTC)
    await _add_counter(
        database, tenant, "ancient", now - pruning.budget_counter_retention(settings) - timedelta(days=1)
    )
    await _add_counter(database, tenant, "today", day_start(now))
    async with running(METERING, settings):
        deadline = time.monotonic() + 15
        while await _counters(database, tenant) != {"today"}:
            assert time.monotonic() < deadline, await _counters(database, tenant)
            await asyncio.sleep(0.1)
