"""Usage events per second from the metering ledger to billing's rollups (target >= 5,000/s).

A backlog of settled requests (ledger rows with their outbox rows, written with COPY before the clock starts)
flows through the real path: metering's outbox relay (in this process, pinned to CPU 1) publishes each event to
JetStream and marks it sent on the server's ack; billing (the real service in its own process, pinned to
CPU 0) fetches batches from its durable consumer, applies each in one transaction and acks after commit.
The clock runs from starting the relay until billing's rollups hold every event; rollups are then compared
with the ledger. PostgreSQL with default durability, NATS with file storage.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.children import cpu_seconds, pin
from bench.metering_support import ROOT, Infra, infrastructure, service_process, write_files
from bench.report import table, write_section
from parapet.auth.v1 import tenant_policy_pb2
from parapet.events import usage as usage_events
from parapet.kit.migrations import migrate
from parapet.kit.testing import make_test_keys, running
from services.metering.app import APP as METERING
from services.metering.ledger import COLUMNS, UsageRecord, event_headers
from services.metering.settings import MeteringSettings

TENANT = "bench"
EVENTS = 60_000
LEDGER_COLUMNS = [*COLUMNS, "labels"]


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _record(i: int, now: datetime) -> UsageRecord:
    return UsageRecord(
        tenant_id=TENANT,
        request_id=f"req-{i}",
        user_id=f"user-{i % 50}",
        api_key_id="",
        reservation_id="",
        feature=("chat", "search", "summarize")[i % 3],
        model=("gpt-4o-mini", "claude-haiku", "local")[i % 3 if i % 7 else 0],
        requested_model="fast",
        provider="openai",
        prompt_tokens=200 + i % 300,
        completion_tokens=50 + i % 100,
        cached_tokens=i % 40,
        estimated=i % 11 == 0,
        cost_micros=1_000 + i % 997,
        currency_code="USD",
        cached=False,
        latency_micros=150_000,
        occur_time=now,
        event_id=str(uuid.uuid4()),
    )


async def _backlog(url: str) -> None:
    now = datetime.now(UTC)
    records = [_record(i, now) for i in range(EVENTS)]
    async with await psycopg.AsyncConnection.connect(_plain(url), options="-c search_path=metering") as conn:
        async with conn.cursor() as cursor:
            async with cursor.copy(f"COPY usage_ledger ({', '.join(LEDGER_COLUMNS)}) FROM STDIN") as copy:
                for r in records:
                    await copy.write_row(
                        [*(getattr(r, c) for c in LEDGER_COLUMNS[:-1]), json.dumps(r.labels)]
                    )
            async with cursor.copy("COPY outbox (event_id, subject, payload, headers) FROM STDIN") as copy:
                for r in records:
                    await copy.write_row(
                        [
                            r.event_id,
                            usage_events.subject(TENANT),
                            r.to_event().SerializeToString(),
                            json.dumps(event_headers(r)),
                        ]
                    )
        await conn.commit()


async def _counts(conn: psycopg.AsyncConnection[Any]) -> tuple[int, int]:
    row = await (
        await conn.execute(
            "SELECT (SELECT count(*) FROM metering.outbox WHERE sent_time IS NOT NULL),"
            " (SELECT coalesce(sum(request_count), 0) FROM billing.rollups WHERE tenant_id = %s)",
            (TENANT,),
        )
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def _exact(conn: psycopg.AsyncConnection[Any]) -> bool:
    query = """
        SELECT (SELECT array_agg(x ORDER BY x) FROM (
                  SELECT row(model, feature, count(*), sum(prompt_tokens), sum(completion_tokens),
                             sum(cached_tokens), sum(cost_micros))::text AS x
                  FROM metering.usage_ledger WHERE tenant_id = %(t)s GROUP BY model, feature) a)
             = (SELECT array_agg(x ORDER BY x) FROM (
                  SELECT row(model, feature, request_count, prompt_tokens, completion_tokens, cached_tokens,
                             cost_micros)::text AS x
                  FROM billing.rollups WHERE tenant_id = %(t)s) b)
    """
    row = await (await conn.execute(query, {"t": TENANT})).fetchone()
    return bool(row and row[0])


async def _run(infra: Infra) -> list[list[str]]:
    keys = make_test_keys()
    env = write_files(infra.directory, keys, {TENANT: tenant_policy_pb2.TenantPolicy()})
    for schema in ("metering", "billing"):
        await migrate(
            infra.database_url,
            schema,
            ROOT / "services" / schema / "migrations",
        )
    await _backlog(infra.database_url)
    settings = MeteringSettings(
        port=0,
        database_url=infra.database_url,
        nats_url=infra.nats_url,
        identity_jwks_file=Path(env["PARAPET_IDENTITY_JWKS_FILE"]),
        policy_file=Path(env["PARAPET_POLICY_FILE"]),
        log_level="WARNING",
    )
    async with (
        service_process("billing", infra, env, cpu=0) as (_port, billing_pid),
        await psycopg.AsyncConnection.connect(_plain(infra.database_url), autocommit=True) as conn,
    ):
        started = time.perf_counter()
        billing_cpu, relay_cpu = cpu_seconds(billing_pid), time.process_time()
        relayed_at = None
        async with running(METERING, settings):
            while True:
                sent, counted = await _counts(conn)
                now = time.perf_counter()
                if relayed_at is None and sent == EVENTS:
                    relayed_at = now
                if counted >= EVENTS:
                    break
                await asyncio.sleep(0.05)
        elapsed = now - started
        billing_cpu, relay_cpu = cpu_seconds(billing_pid) - billing_cpu, time.process_time() - relay_cpu
        exact = await _exact(conn) and counted == EVENTS
    relay_seconds = (relayed_at or now) - started
    return [
        [
            f"{EVENTS:,}",
            f"{elapsed:.2f}",
            f"{EVENTS / elapsed:,.0f}",
            f"{EVENTS / relay_seconds:,.0f}",
            f"{relay_cpu * 1e6 / EVENTS:.0f}",
            f"{billing_cpu * 1e6 / EVENTS:.0f}",
            "yes" if exact else "NO",
        ]
    ]


async def main() -> None:
    pin(1)
    with tempfile.TemporaryDirectory() as tmp, infrastructure(Path(tmp)) as infra:
        rows = await _run(infra)
    body = "\n\n".join(
        [
            __doc__.split("\n\n", 1)[1].strip() if __doc__ else "",
            table(
                [
                    "events",
                    "seconds",
                    "events/s ledger -> rollups",
                    "events/s relay -> JetStream",
                    "relay process CPU µs/event",
                    "billing CPU µs/event",
                    "rollups = ledger",
                ],
                rows,
            ),
            "Target: >= 5,000 events/s end to end (issue #8). CPU per event: the relay's process (which also "
            "polls the database for progress) and the billing process; 1e6 / µs is the rate one free core "
            "sustains for that stage.",
        ]
    )
    write_section(
        "billing_throughput",
        "Usage events: ledger to rollups",
        ".venv/bin/python -m bench billing_throughput",
        body,
    )
    print(body)
