"""Faults with real NATS and PostgreSQL: a NATS outage while usage flows, a billing process killed mid-flow,
a batch committed but never acknowledged, duplicates published on purpose, and poison messages. Rollups end
exactly equal to the ledger (or to the unique events) every time."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc.aio
from sqlalchemy import text

from parapet.embedded import EmbeddedNats, EmbeddedPostgres
from parapet.events.usage import USAGE_STREAM
from parapet.kit import timeouts
from parapet.kit.bus import Bus
from parapet.kit.database import Database
from parapet.kit.migrations import migrate
from parapet.kit.testing import TestKeys, running
from parapet.metering.v1 import metering_service_pb2_grpc
from services.billing.consumer import UsageConsumer
from services.metering.app import APP as METERING
from services.metering.ledger import EVENT_SOURCE, EVENT_TYPE
from tests.integration.billing.conftest import usage_event
from tests.integration.metering.metering_support import (
    caller,
    metering_settings,
    new_tenant,
    settle,
    suite,
    wait_until_rollups_match,
    write_jwks,
)


async def test_nats_outage_while_usage_flows_delays_events_and_loses_none(
    tmp_path: Path, keys: TestKeys, database_url: str, fresh_nats: EmbeddedNats, policy_file: Path
) -> None:
    tenant = new_tenant()
    total = 240
    async with suite(tmp_path, keys, database_url, fresh_nats.url, policy_file) as (metering, _billing):
        who = caller(keys, tenant)
        settled = 0
        progressed = asyncio.Event()
        target = 60

        async def flow() -> None:
            nonlocal settled
            for i in range(total):
                await metering.Settle(settle(i, "m", "f", 100 + i), metadata=who)
                settled += 1
                if settled >= target:
                    progressed.set()
                await asyncio.sleep(0.01)

        flowing = asyncio.create_task(flow())
        try:
            await timeouts.within(60, progressed.wait())
            await asyncio.to_thread(fresh_nats.stop)  # usage keeps settling into the outbox meanwhile
            progressed.clear()
            target = settled + 40
            # Settlements go on while NATS is down (they only need PostgreSQL).
            await timeouts.within(60, progressed.wait())
            await asyncio.to_thread(fresh_nats.start)
            await flowing
        finally:
            flowing.cancel()
        await wait_until_rollups_match(database_url, tenant, total)


async def test_nats_restarted_without_its_store_gets_the_stream_back_and_loses_nothing(
    tmp_path: Path, keys: TestKeys, database_url: str, fresh_nats: EmbeddedNats, policy_file: Path
) -> None:
    """A NATS whose JetStream store is lost on restart (an emptyDir, as in the dev overlay; a wiped volume)
    comes back without the USAGE stream and billing's durable consumer. Before, the relay's publishes found
    no stream and the events waited in the outbox until metering restarted, and billing's subscription
    pointed at a consumer that no longer existed until billing restarted."""
    tenant = new_tenant()
    async with suite(tmp_path, keys, database_url, fresh_nats.url, policy_file) as (metering, _billing):
        who = caller(keys, tenant)
        for i in range(20):
            await metering.Settle(settle(i, "m", "f", 100 + i), metadata=who)
        await wait_until_rollups_match(database_url, tenant, 20)
        await asyncio.to_thread(fresh_nats.stop)
        await asyncio.to_thread(shutil.rmtree, fresh_nats.store_dir)
        await asyncio.to_thread(fresh_nats.start)
        for i in range(20, 40):
            await metering.Settle(settle(i, "m", "f", 100 + i), metadata=who)
        await wait_until_rollups_match(database_url, tenant, 40)


ROOT = Path(__file__).resolve().parents[3]
BILLING_PROGRAM = """
from parapet.kit.server import main
from services.billing.app import APP

main(APP)
"""


@asynccontextmanager
async def billing_process(tmp_path: Path, env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    script = tmp_path / "billing_main.py"
    script.write_text(BILLING_PROGRAM)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, **env},
        cwd=str(ROOT),
    )
    try:
        assert proc.stdout is not None
        announcement = json.loads(await timeouts.within(60, proc.stdout.readline()))
        assert announcement["event"] == "serving"
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _rollup_sums(database: Database, tenant: str) -> tuple[int, int]:
    """Requests and prompt tokens counted for ``tenant``."""
    async with database.session() as session:
        row = (
            await session.execute(
                text(
                    "SELECT coalesce(sum(request_count), 0), coalesce(sum(prompt_tokens), 0) "
                    "FROM billing.rollups WHERE tenant_id = :t"
                ),
                {"t": tenant},
            )
        ).one()
    return int(row[0]), int(row[1])


async def test_billing_killed_mid_flow_and_restarted_ends_exact(
    tmp_path: Path, keys: TestKeys, database_url: str, fresh_nats: EmbeddedNats, policy_file: Path
) -> None:
    tenant = new_tenant()
    total = 1500
    env = {
        "PARAPET_PORT": "0",
        "PARAPET_DATABASE_URL": database_url,
        "PARAPET_NATS_URL": fresh_nats.url,
        "PARAPET_IDENTITY_JWKS_FILE": str(write_jwks(tmp_path / "jwks.json", keys)),
        "PARAPET_POLICY_FILE": str(policy_file),
        "PARAPET_FETCH_BATCH_SIZE": "20",
        "PARAPET_ACK_WAIT_SECONDS": "2",
        "PARAPET_LOG_LEVEL": "ERROR",
    }
    settings = metering_settings(tmp_path, keys, database_url, fresh_nats.url, policy_file)
    database = Database(database_url, "metering")
    try:
        async with (
            running(METERING, settings) as (_server, port),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            metering = metering_service_pb2_grpc.MeteringServiceStub(channel)
            who = caller(keys, tenant)
            # A backlog first (the relay publishes it), so the killed consumer is mid-way through it.
            for start in range(0, total, 100):
                await asyncio.gather(
                    *(
                        metering.Settle(settle(i, f"m{i % 3}", "f", 10 + i), metadata=who)
                        for i in range(start, start + 100)
                    )
                )
            async with billing_process(tmp_path, env) as first:
                counted = 0
                while counted == 0:  # kill it while it is working through the backlog
                    counted = (await _rollup_sums(database, tenant))[0]
                    await asyncio.sleep(0.02)
                first.send_signal(signal.SIGKILL)
                await first.wait()
            partial = (await _rollup_sums(database, tenant))[0]
            assert 0 < partial < total
            async with billing_process(tmp_path, env):
                await wait_until_rollups_match(database_url, tenant, total)
    finally:
        await database.close()


async def test_committed_unacked_batch_and_deliberate_duplicates_count_once(
    database_url: str, fresh_nats: EmbeddedNats
) -> None:
    await migrate(database_url, "billing", ROOT / "services/billing/migrations")
    tenant = new_tenant()
    bus = await Bus.connect(fresh_nats.url)
    database = Database(database_url, "billing")
    try:
        await bus.ensure_stream(USAGE_STREAM)
        events = [usage_event(tenant, i) for i in range(50)]
        subject = f"parapet.usage.v1.{tenant}"
        headers = {"ce-type": EVENT_TYPE, "ce-source": EVENT_SOURCE}
        for event in events:
            await bus.publish(subject, event.SerializeToString(), msg_id=event.event_id, headers=headers)
        for event in events[:10]:  # a relay republish: same Nats-Msg-Id, dropped by the stream
            await bus.publish(subject, event.SerializeToString(), msg_id=event.event_id, headers=headers)
        for event in events[10:20]:  # past the duplicate window: a new message id, same event id
            await bus.publish(subject, event.SerializeToString(), msg_id=str(uuid.uuid4()), headers=headers)
        # Poison: not a protobuf, and a UsageEvent whose id is no UUID; both are terminated, never block.
        await bus.publish(subject, b"\xff\xff not protobuf", msg_id=str(uuid.uuid4()), headers=headers)
        poison = usage_event(tenant, 999)
        poison.event_id = "not-a-uuid"
        await bus.publish(subject, poison.SerializeToString(), msg_id=str(uuid.uuid4()), headers=headers)
        info = await bus.jetstream.stream_info(USAGE_STREAM.name)
        assert info.state.messages == 62

        def consumer() -> UsageConsumer:
            return UsageConsumer(
                database,
                bus,
                durable="billing-test",
                batch_size=25,
                fetch_timeout=0.5,
                ack_wait=1.0,
                max_ack_pending=1000,
            )

        crashing = consumer()
        subscription = await crashing.subscribe()
        batch = await subscription.fetch(25, timeout=5)
        assert await crashing.process(batch, ack=False) == 25  # committed, then "crashed" before acking
        await subscription.unsubscribe()

        restarted = consumer()
        task = asyncio.create_task(restarted.run())
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                async with database.session() as session:
                    row = (
                        await session.execute(
                            text(
                                "SELECT coalesce(sum(request_count), 0), coalesce(sum(prompt_tokens), 0), "
                                "coalesce(sum(completion_tokens), 0), coalesce(sum(cost_micros), 0) "
                                "FROM rollups WHERE tenant_id = :t"
                            ),
                            {"t": tenant},
                        )
                    ).one()
                    pending = (
                        await bus.jetstream.consumer_info(USAGE_STREAM.name, "billing-test")
                    ).num_ack_pending
                if row[0] == 50 and pending == 0:
                    break
                assert row[0] <= 50, "an event was counted twice"
                assert asyncio.get_running_loop().time() < deadline, row
                await asyncio.sleep(0.1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert tuple(row) == (
            50,
            sum(e.usage.prompt_tokens for e in events),
            sum(e.usage.completion_tokens for e in events),
            sum(e.cost.amount_micros for e in events),
        )
        # The redelivered batch and the 10 duplicates reached the consumer but added nothing.
        assert restarted.applied == 25
    finally:
        await database.close()
        await bus.close()


async def test_events_that_can_never_be_applied_are_set_aside_and_block_nothing(
    database_url: str, fresh_nats: EmbeddedNats
) -> None:
    await migrate(database_url, "billing", ROOT / "services/billing/migrations")
    tenant, other = new_tenant(), new_tenant()
    bus = await Bus.connect(fresh_nats.url)
    database = Database(database_url, "billing")
    headers = {"ce-type": EVENT_TYPE, "ce-source": EVENT_SOURCE}
    try:
        await bus.ensure_stream(USAGE_STREAM)
        # Two events whose data the database refuses (a NUL in a text), among ordinary ones of both tenants, all in
        # one batch: before, such a batch failed (as it did for two events whose sum exceeded bigint, which billing
        # now sets aside before the database sees them) and was redelivered forever, so nothing in it was counted.
        huge = [usage_event(tenant, 1), usage_event(tenant, 2)]
        for event in huge:
            event.model = "m\x00"
        ordinary = [usage_event(tenant, 3), usage_event(other, 4), usage_event(other, 5)]
        unplaceable = usage_event(other, 6)  # an occur_time no calendar holds: the rollup has no day for it
        unplaceable.occur_time.seconds = 2**62
        # No occur_time at all: it was counted on 1970-01-01, a day no invoice of this tenant will ever show.
        timeless = usage_event(other, 8)
        timeless.ClearField("occur_time")
        for event in [ordinary[0], *huge, *ordinary[1:], unplaceable, timeless]:
            subject = f"parapet.usage.v1.{event.tenant_id}"
            await bus.publish(subject, event.SerializeToString(), msg_id=event.event_id, headers=headers)
        # Published on the other tenant's subject but charging this one: a publisher that NATS lets write
        # only its own tenant's subject must not charge another. Before, it was counted for `tenant`.
        foreign = usage_event(tenant, 7)
        await bus.publish(
            f"parapet.usage.v1.{other}", foreign.SerializeToString(), msg_id=foreign.event_id, headers=headers
        )
        consumer = UsageConsumer(
            database,
            bus,
            durable="billing-refused",
            batch_size=25,
            fetch_timeout=0.5,
            ack_wait=1.0,
            max_ack_pending=1000,
        )
        await (await consumer.subscribe()).unsubscribe()  # the durable exists before it is asked about
        set_aside_before = {
            reason: _set_aside_count(reason) for reason in ("refused", "undecodable", "mismatched")
        }
        await _drained(consumer, bus, "billing-refused", "a refused event blocks the stream")
        assert consumer.applied == 3  # the ordinary three
        assert await _rollup_sums(database, other) == (2, 4 + 5)
        assert await _rollup_sums(database, tenant) == (1, 3)
        # Counted (and alerted on: ParapetBillingEventsSetAside), not only logged.
        assert _set_aside_count("refused") - set_aside_before["refused"] == 2
        assert _set_aside_count("undecodable") - set_aside_before["undecodable"] == 2
        assert _set_aside_count("mismatched") - set_aside_before["mismatched"] == 1
    finally:
        await database.close()
        await bus.close()


def _set_aside_count(reason: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("parapet_billing_events_set_aside_total", {"reason": reason}) or 0.0


async def test_events_with_figures_no_settlement_can_have_are_set_aside(
    database_url: str, fresh_nats: EmbeddedNats
) -> None:
    """Metering settles only non-negative figures within its ceilings (2^32 tokens, 2^46 micros), in its ISO 4217
    currency, with names of at most 256 characters. An event outside that came from no settlement: before, billing
    added it all the same, so a negative cost lowered an invoice, and an amount near 2^63 made every later invoice
    preview of the tenant fail INTERNAL; a name of thousands of characters could not be indexed, which is no data
    exception, so its batch, with every tenant's events in it, was redelivered for ever."""
    await migrate(database_url, "billing", ROOT / "services/billing/migrations")
    tenant = new_tenant()
    bus = await Bus.connect(fresh_nats.url)
    database = Database(database_url, "billing")
    headers = {"ce-type": EVENT_TYPE, "ce-source": EVENT_SOURCE}
    try:
        await bus.ensure_stream(USAGE_STREAM)
        ordinary = [usage_event(tenant, 3), usage_event(tenant, 4)]
        invalid = [usage_event(tenant, 10 + i) for i in range(9)]
        invalid[0].cost.amount_micros = -5_000_000
        invalid[1].usage.completion_tokens = -1
        invalid[2].usage.prompt_tokens = 2**32 + 1
        invalid[3].cost.amount_micros = 2**62
        invalid[4].cost.currency_code = "usd"
        invalid[5].cost.currency_code = "US DOLLAR"
        invalid[6].model = "m" * 257
        invalid[7].feature = "".join(chr(0x4E00 + i) for i in range(3000))  # not indexable, not compressible
        # Within metering's 256 characters each, but 3 KB of key that compression cannot shrink: no index entry.
        wide = "".join(chr(0x20000 + 7 * i) for i in range(256))
        invalid[8].model, invalid[8].feature, invalid[8].provider = wide, wide[::-1], wide[1:] + "p"
        for event in [ordinary[0], *invalid, ordinary[1]]:
            await bus.publish(
                f"parapet.usage.v1.{tenant}",
                event.SerializeToString(),
                msg_id=event.event_id,
                headers=headers,
            )
        consumer = UsageConsumer(
            database,
            bus,
            durable="billing-invalid",
            batch_size=25,
            fetch_timeout=0.5,
            ack_wait=1.0,
            max_ack_pending=1000,
        )
        await (await consumer.subscribe()).unsubscribe()
        before = _set_aside_count("out_of_bounds")
        await _drained(consumer, bus, "billing-invalid", "an invalid event blocks the stream")
        assert consumer.applied == 2
        assert await _rollup_sums(database, tenant) == (2, 3 + 4)
        assert _set_aside_count("out_of_bounds") - before == len(invalid)
    finally:
        await database.close()
        await bus.close()


async def _drained(consumer: UsageConsumer, bus: Bus, durable: str, blocked: str) -> None:
    """Runs ``consumer`` until its durable has every message acknowledged or terminated (none waits for a
    redelivery), failing with ``blocked`` after 30 s."""
    task = asyncio.create_task(consumer.run())
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            info = await bus.jetstream.consumer_info(USAGE_STREAM.name, durable)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            assert asyncio.get_running_loop().time() < deadline, f"{blocked}: {info}"
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_batch_failed_by_a_database_outage_comes_back_soon_even_after_a_set_aside_event(
    fresh_postgres: EmbeddedPostgres, fresh_nats: EmbeddedNats
) -> None:
    """A batch the database could not take is nak'd so that it comes back in a second, not after ack_wait. The
    nak loop stopped at the first message it could not nak, taking that for NATS being down; but a message set aside
    earlier in the batch (terminated) cannot be nak'd either, so the events behind it waited for ack_wait (30 s by
    default) after the database was back."""
    await migrate(fresh_postgres.url, "billing", ROOT / "services/billing/migrations")
    tenant = new_tenant()
    bus = await Bus.connect(fresh_nats.url)
    database = Database(fresh_postgres.url, "billing")
    headers = {"ce-type": EVENT_TYPE, "ce-source": EVENT_SOURCE}
    ack_wait = 60.0
    try:
        await bus.ensure_stream(USAGE_STREAM)
        subject = f"parapet.usage.v1.{tenant}"
        await bus.publish(subject, b"\xff\xff not protobuf", msg_id=str(uuid.uuid4()), headers=headers)
        events = [usage_event(tenant, i) for i in range(1, 6)]
        for event in events:
            await bus.publish(subject, event.SerializeToString(), msg_id=event.event_id, headers=headers)
        consumer = UsageConsumer(
            database,
            bus,
            durable="billing-outage",
            batch_size=25,
            fetch_timeout=0.5,
            ack_wait=ack_wait,
            max_ack_pending=1000,
        )
        await (await consumer.subscribe()).unsubscribe()
        undecodable = _set_aside_count("undecodable")
        await asyncio.to_thread(fresh_postgres.stop)
        task = asyncio.create_task(consumer.run())
        try:
            # The batch was fetched, its first message set aside, and applying the rest failed.
            deadline = asyncio.get_running_loop().time() + 30
            while _set_aside_count("undecodable") == undecodable:
                assert asyncio.get_running_loop().time() < deadline, "the batch was never fetched"
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(fresh_postgres.start)
            deadline = asyncio.get_running_loop().time() + ack_wait / 2
            while await _rollup_sums(database, tenant) != (5, 1 + 2 + 3 + 4 + 5):
                assert asyncio.get_running_loop().time() < deadline, "the batch waited for ack_wait"
                await asyncio.sleep(0.1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await database.close()
        await bus.close()
