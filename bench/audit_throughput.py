"""The audit service: records persisted per second from the stream, VerifyChain over a million records,
and QueryInteractions latency.

A PostgreSQL (durable settings: fsync and synchronous_commit on) and a NATS with file storage of the
benchmark's own; the audit service runs through the kit's ``main`` in a child process pinned to CPU 0, the
load side here on CPU 1.
- Throughput: RECORDS interaction records of TENANTS tenants are published while the service is stopped;
  the service then starts and the time from its first to its last commit gives records persisted per
  second (the durable consumer drains the backlog in batches, one transaction per tenant per batch).
- VerifyChain: a chain of CHAIN_RECORDS records is inserted set-wise (prepared and hashed here, loaded
  with INSERT ... SELECT FROM unnest), then one VerifyChain RPC checks all of it.
- Query: QUERIES sequential QueryInteractions calls (50 records, a user filter, random start times)
  against that tenant, p50/p95/p99.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc.aio
from sqlalchemy import text

from bench.report import table, write_section
from bench.stats import LatencySummary
from parapet.audit.v1 import audit_record_pb2, audit_service_pb2, audit_service_pb2_grpc, interaction_pb2
from parapet.auth.v1 import tenant_policy_pb2
from parapet.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from parapet.events.audit import AUDIT_STREAM, publish
from parapet.kit import timeouts
from parapet.kit.bus import Bus
from parapet.kit.database import Database
from parapet.kit.identity import Principal
from parapet.kit.migrations import migrate
from parapet.kit.testing import make_test_keys
from services.audit.canonical import ZERO_HASH, prepare, record_hash
from services.audit.store import insert_rows

ROOT = Path(__file__).resolve().parent.parent
RECORDS = int(os.environ.get("BENCH_AUDIT_RECORDS", "30000"))
TENANTS = 10
CHAIN_RECORDS = int(os.environ.get("BENCH_AUDIT_CHAIN", "1000000"))
QUERIES = 1000
USERS = 200
PROGRAM = "from parapet.kit.server import main\nfrom services.audit.app import APP\nmain(APP)\n"


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > cpu:
        os.sched_setaffinity(0, {cpu})


def _interaction(tenant: str, user: str, when: datetime) -> audit_record_pb2.AuditRecord:
    record = audit_record_pb2.AuditRecord(
        record_id=str(uuid.uuid4()),
        tenant_id=tenant,
        interaction=interaction_pb2.Interaction(
            request_id=uuid.uuid4().hex,
            trace_id=uuid.uuid4().hex,
            user_id=user,
            api_key_id="key-1",
            feature="support",
            requested_model="default",
            model="gpt-4o-mini",
            provider="openai",
            body=interaction_pb2.InteractionBody(
                retention=tenant_policy_pb2.BODY_RETENTION_MASKED,
                prompt='[{"role":"user","content":"What is our refund policy for annual plans?"}]',
                response="Annual plans can be refunded pro rata within 30 days of renewal.",
            ),
        ),
    )
    record.interaction.usage.prompt_tokens = 412
    record.interaction.usage.completion_tokens = 38
    record.interaction.cost.currency_code = "USD"
    record.interaction.cost.amount_micros = 1234
    record.interaction.latency.FromMilliseconds(640)
    record.interaction.time_to_first_token.FromMilliseconds(120)
    record.create_time.FromDatetime(when)
    return record


@asynccontextmanager
async def _audit_process(env: dict[str, str]) -> AsyncIterator[int]:
    script = Path(env["BENCH_DIR"]) / "audit_main.py"
    script.write_text(PROGRAM)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=str(ROOT),
        env={**os.environ, **env},
        preexec_fn=lambda: _pin(0),
    )
    try:
        assert proc.stdout is not None
        announcement = json.loads(await timeouts.within(120, proc.stdout.readline()))
        yield int(announcement["port"])
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def _count(database: Database) -> int:
    async with database.transaction() as session:
        return int((await session.execute(text("SELECT count(*) FROM records"))).scalar_one())


async def _drain_rate(database: Database) -> tuple[float, float]:
    """(records/s, seconds) between the first and the last consumer transaction.

    ``ingest_time`` is each transaction's start, so the records of the first transaction are left out of
    the count: what remains was all committed within the measured span.
    """
    async with database.transaction() as session:
        row = (
            await session.execute(
                text(
                    "SELECT extract(epoch FROM max(ingest_time) - min(ingest_time)) AS span,"
                    " count(*) FILTER (WHERE ingest_time > (SELECT min(ingest_time) FROM records)) AS later"
                    " FROM records"
                )
            )
        ).one()
    span = float(row.span)
    return int(row.later) / span, span


async def _throughput(env: dict[str, str], nats_url: str, database: Database) -> tuple[float, float]:
    """(records persisted per second, seconds to drain) for RECORDS records published while stopped."""
    bus = await Bus.connect(nats_url)
    try:
        await bus.ensure_stream(AUDIT_STREAM)
        now = datetime.now(UTC)
        records = [_interaction(f"bench-{i % TENANTS}", f"user-{i % USERS}", now) for i in range(RECORDS)]
        for start in range(0, RECORDS, 500):
            await asyncio.gather(*(publish(bus, r, source="/bench") for r in records[start : start + 500]))
    finally:
        await bus.close()
    async with _audit_process(env):
        for _ in range(6000):  # at most 20 minutes
            if await _count(database) >= RECORDS:
                break
            await asyncio.sleep(0.2)
    return await _drain_rate(database)


async def _load_chain(database: Database, tenant: str) -> float:
    """Insert CHAIN_RECORDS chained records of ``tenant`` set-wise; returns seconds."""
    started = time.perf_counter()
    previous, sequence = ZERO_HASH, 0
    begin = datetime.now(UTC) - timedelta(days=7)
    step = timedelta(days=7) / CHAIN_RECORDS
    while sequence < CHAIN_RECORDS:
        rows = []
        for _ in range(min(10_000, CHAIN_RECORDS - sequence)):
            sequence += 1
            prepared = prepare(
                _interaction(tenant, f"user-{sequence % USERS}", begin + step * sequence), tenant
            )
            digest = record_hash(sequence, previous, prepared.metadata_sha256)
            rows.append((prepared, sequence, previous, digest))
            previous = digest
        async with database.transaction() as session:
            await insert_rows(session, tenant, rows)
    async with database.transaction() as session:
        await session.execute(
            text("INSERT INTO chain_heads (tenant_id, sequence, head_hash) VALUES (:t, :s, :h)"),
            {"t": tenant, "s": sequence, "h": previous},
        )
        await session.execute(text("ANALYZE records"))
    return time.perf_counter() - started


async def main() -> None:
    _pin(1)
    load_before = os.getloadavg()[0]  # the machine is shared: say how busy it was
    keys = make_test_keys()
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as directory:
        home = Path(directory)
        postgres = EmbeddedPostgres(home / "pg", free_port())
        nats = EmbeddedNats(home / "nats", free_port())
        postgres.start()
        nats.start()
        database = Database(postgres.url, "audit")
        try:
            jwks = home / "jwks.json"
            jwks.write_text(json.dumps(keys.jwks()))
            env = {
                "BENCH_DIR": directory,
                "PARAPET_PORT": "0",
                "PARAPET_DATABASE_URL": postgres.url,
                "PARAPET_NATS_URL": nats.url,
                "PARAPET_LOG_LEVEL": "WARNING",
                "PARAPET_IDENTITY_JWKS_FILE": str(jwks),
                "PARAPET_AUDIT_CHECKPOINT_KEY_FILE": str(home / "checkpoint.pem"),
            }
            await migrate(postgres.url, "audit", ROOT / "services" / "audit" / "migrations")
            rate, drain_seconds = await _throughput(env, nats.url, database)
            print(f"throughput: {rate:.0f} records/s ({RECORDS} in {drain_seconds:.1f} s)", flush=True)

            tenant = "bench-chain"
            load_seconds = await _load_chain(database, tenant)
            print(f"loaded {CHAIN_RECORDS} records in {load_seconds:.1f} s", flush=True)
            metadata = keys.metadata(Principal(tenant_id=tenant, subject="auditor", roles=("admin",)))
            async with _audit_process(env) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = audit_service_pb2_grpc.AuditServiceStub(channel)
                started = time.perf_counter()
                verified = await stub.VerifyChain(
                    audit_service_pb2.VerifyChainRequest(), metadata=metadata, timeout=3600
                )
                verify_seconds = time.perf_counter() - started
                assert verified.intact and verified.records_verified == CHAIN_RECORDS, verified
                print(f"VerifyChain: {verify_seconds:.1f} s", flush=True)

                rng = random.Random(7)
                span = timedelta(days=7).total_seconds()
                samples: list[float] = []
                for i in range(QUERIES + 50):
                    request = audit_service_pb2.QueryInteractionsRequest(page_size=50)
                    request.filter.user_id = f"user-{rng.randrange(USERS)}"
                    request.filter.start_time.FromDatetime(
                        datetime.now(UTC) - timedelta(seconds=rng.uniform(0, span))
                    )
                    begun = time.perf_counter()
                    count = 0
                    async for batch in stub.QueryInteractions(request, metadata=metadata, timeout=30):
                        count += len(batch.records)
                    if i >= 50:  # warm-up excluded
                        samples.append(time.perf_counter() - begun)
                query = LatencySummary.of(samples)
        finally:
            await database.close()
            nats.stop()
            postgres.stop()

    body = "\n\n".join(
        [
            table(
                ["measure", "result", "target"],
                [
                    [
                        f"records persisted per second (stream backlog of {RECORDS:,}, {TENANTS} tenants, batches of 500)",
                        f"{rate:,.0f}/s ({drain_seconds:.1f} s)",
                        "≥ 5,000/s",
                    ],
                    [
                        f"VerifyChain over {CHAIN_RECORDS:,} records (one RPC)",
                        f"{verify_seconds:.1f} s ({CHAIN_RECORDS / verify_seconds:,.0f} records/s)",
                        "",
                    ],
                    [
                        "loading that chain set-wise (prepare, hash, INSERT … SELECT FROM jsonb_to_recordset)",
                        f"{load_seconds:.1f} s",
                        "",
                    ],
                ],
            ),
            f"QueryInteractions (50 records, user filter, random start time, {CHAIN_RECORDS:,}-record tenant), "
            f"{QUERIES} sequential calls, milliseconds:\n\n"
            + table(["p50", "p95", "p99", "max"], [query.cells()]),
            "Durable PostgreSQL (fsync, synchronous_commit on) and NATS file storage; the audit service in one "
            "process pinned to one core, the load side on the other. Load average (1 min) at start "
            f"{load_before:.1f}, at end {os.getloadavg()[0]:.1f}, on 2 cores: other processes shared the machine.",
        ]
    )
    write_section(
        "audit_throughput",
        "Audit: persistence rate, VerifyChain, query latency",
        "python -m bench audit_throughput",
        body,
    )
