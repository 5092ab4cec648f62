"""A running audit service (real PostgreSQL, NATS, gRPC) and helpers to build records and callers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc.aio
import pytest
from nats.js.errors import NotFoundError
from sqlalchemy import text

from parapet.audit.v1 import audit_record_pb2, audit_service_pb2, audit_service_pb2_grpc, interaction_pb2
from parapet.auth.v1 import tenant_policy_pb2
from parapet.events.audit import AUDIT_STREAM
from parapet.kit.bus import Bus
from parapet.kit.database import Database
from parapet.kit.identity import Principal
from parapet.kit.testing import TestKeys, make_test_keys, running
from services.audit.app import APP
from services.audit.checkpoints import checkpoint_all
from services.audit.settings import AuditSettings
from services.audit.signing import CheckpointSigner, load_signer


def audit_settings(
    database_url: str, nats_url: str, tmp_path: Path, keys: TestKeys, **overrides: Any
) -> AuditSettings:
    jwks_file = tmp_path / "jwks.json"
    if not jwks_file.exists():
        jwks_file.write_text(json.dumps(keys.jwks()))
    values: dict[str, Any] = {
        "port": 0,
        "database_url": database_url,
        "nats_url": nats_url,
        "identity_jwks_file": jwks_file,
        "health_interval_seconds": 0.2,
        "shutdown_grace_seconds": 1.0,
        "nats_reconnect_wait_seconds": 0.2,
        "audit_checkpoint_key_file": tmp_path / "checkpoint.pem",
        # Tests sign checkpoints and run retention themselves, when they choose.
        "audit_checkpoint_interval_seconds": 3600.0,
        "audit_retention_interval_seconds": 3600.0,
        # The default durable, as every audit service on the session's NATS uses (the gateway suite's too):
        # the AUDIT work queue admits one consumer, so a durable of each test's own would be refused.
    }
    values.update(overrides)
    return AuditSettings(**values)


async def stored(database: Database, tenant: str) -> int:
    """How many records of ``tenant`` the audit log holds."""
    async with database.transaction() as session:
        value = (
            await session.execute(text("SELECT count(*) FROM records WHERE tenant_id = :t"), {"t": tenant})
        ).scalar_one()
    return int(value)


async def wait_for_count(count: Callable[[], Awaitable[int]], expected: int, within: float = 30.0) -> int:
    """What ``count()`` says once it reaches ``expected``, or when ``within`` seconds have passed."""
    deadline = asyncio.get_running_loop().time() + within
    value = await count()
    while value < expected and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
        value = await count()
    return value


async def wait_for_stored(database: Database, tenant: str, expected: int, within: float = 30.0) -> int:
    """The count of ``tenant``'s records once it reaches ``expected``, or when ``within`` seconds have passed."""
    return await wait_for_count(lambda: stored(database, tenant), expected, within)


async def remove_consumer(bus: Bus, durable: str) -> None:
    """Delete the AUDIT stream's consumer ``durable`` if it exists (its unacked messages stay in the stream)."""
    with contextlib.suppress(NotFoundError):
        await bus.jetstream.delete_consumer(AUDIT_STREAM.name, durable)


async def in_stream(bus: Bus, stream: str, subject_name: str) -> int:
    """How many messages on ``subject_name`` the JetStream ``stream`` holds."""
    info = await bus.jetstream.stream_info(stream, subjects_filter=subject_name)
    return (info.state.subjects or {}).get(subject_name, 0)


@dataclass
class Harness:
    """For a test that starts and stops the audit service itself: its settings, the database as the owner, and
    a NATS connection to publish and inspect streams with."""

    settings: AuditSettings
    database: Database
    bus: Bus
    durables: list[str] = field(default_factory=list)  # the test's own consumers on AUDIT

    async def without_consumer(self) -> None:
        """Start and stop the service once, so that its schema and streams exist, then remove its durable: the
        AUDIT work queue has no consumer afterwards."""
        async with running(APP, self.settings):
            pass
        await remove_consumer(self.bus, self.settings.audit_consumer_durable)

    async def pull(self, subject_name: str, durable: str) -> Any:
        """A pull consumer of the test's own on AUDIT (once there is no other), removed when the harness
        closes: left behind, it would make the work queue refuse the next audit service's durable."""
        self.durables.append(durable)
        return await self.bus.jetstream.pull_subscribe(
            subject_name, durable=durable, stream=AUDIT_STREAM.name
        )


@contextlib.asynccontextmanager
async def harness(database_url: str, nats_url: str, tmp_path: Path, keys: TestKeys) -> AsyncIterator[Harness]:
    database = Database(database_url, "audit", pool_size=2, max_overflow=0)
    try:
        bus = await Bus.connect(nats_url)
        parts = Harness(audit_settings(database_url, nats_url, tmp_path, keys), database, bus)
        try:
            yield parts
        finally:
            for durable in parts.durables:
                await remove_consumer(bus, durable)
            await bus.close()
    finally:
        await database.close()


def new_tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def interaction(
    user_id: str = "user-1",
    *,
    prompt: str = "What is our refund policy?",
    response: str = "Refunds within 30 days.",
    retention: int = tenant_policy_pb2.BODY_RETENTION_FULL,
    retention_days: int = 0,
    model: str = "gpt-test",
    status_code: int = 0,
    request_id: str | None = None,
    cost_micros: int = 1500,
    tenant_id: str = "",
    created: datetime | None = None,
) -> audit_record_pb2.AuditRecord:
    """An interaction of ``user_id``; ``tenant_id`` set for records published to the stream (whose subject
    must match), ``created`` for one made earlier than now."""
    record = audit_record_pb2.AuditRecord(
        record_id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        interaction=interaction_pb2.Interaction(
            request_id=request_id or uuid.uuid4().hex,
            trace_id="0" * 31 + "1",
            user_id=user_id,
            api_key_id="key-1",
            feature="support",
            requested_model="default",
            model=model,
            provider="openai",
            fallback_models=["gpt-primary"],
            status_code=status_code,
            body=interaction_pb2.InteractionBody(
                retention=retention,  # type: ignore[arg-type]
                prompt=prompt,
                response=response,
                retention_days=retention_days,
            ),
        ),
    )
    record.interaction.usage.prompt_tokens = 12
    record.interaction.usage.completion_tokens = 7
    record.interaction.cost.currency_code = "USD"
    record.interaction.cost.amount_micros = cost_micros
    record.interaction.latency.FromMilliseconds(420)
    record.interaction.time_to_first_token.FromMilliseconds(80)
    if created is None:
        record.create_time.GetCurrentTime()
    else:
        record.create_time.FromDatetime(created)
    return record


@dataclass
class Audit:
    """A running audit service and what tests need around it."""

    port: int
    channel: grpc.aio.Channel
    stub: audit_service_pb2_grpc.AuditServiceStub
    keys: TestKeys
    database: Database  # connects as the owner: what an attacker with database access could do
    signer: CheckpointSigner

    def metadata(
        self,
        tenant: str,
        *,
        roles: tuple[str, ...] = ("admin",),
        credential_type: str = "",
        subject: str = "auditor",
    ) -> tuple[tuple[str, str], ...]:
        principal = Principal(tenant_id=tenant, subject=subject, roles=roles, credential_type=credential_type)
        return self.keys.metadata(principal)

    def producer(self, tenant: str) -> tuple[tuple[str, str], ...]:
        return self.metadata(tenant, roles=(), credential_type="service", subject="gateway")

    async def record(
        self, tenant: str, record: audit_record_pb2.AuditRecord
    ) -> audit_service_pb2.RecordResponse:
        return await self.stub.Record(  # type: ignore[no-any-return]
            audit_service_pb2.RecordRequest(record=record), metadata=self.producer(tenant), timeout=10
        )

    async def verify(
        self, tenant: str, start: int = 0, end: int = 0
    ) -> audit_service_pb2.VerifyChainResponse:
        return await self.stub.VerifyChain(  # type: ignore[no-any-return]
            audit_service_pb2.VerifyChainRequest(start_sequence=start, end_sequence=end),
            metadata=self.metadata(tenant),
            timeout=30,
        )

    async def checkpoint(self) -> int:
        return await checkpoint_all(self.database, self.signer)

    async def tamper(self, sql: str, **params: Any) -> None:
        """Run ``sql`` as the table owner (no row-level security), as an attacker with database access."""
        async with self.database.transaction() as session:
            await session.execute(text(sql), params)


@pytest.fixture
def keys() -> TestKeys:
    return make_test_keys()


@pytest.fixture
async def audit(database_url: str, nats_url: str, tmp_path: Path, keys: TestKeys) -> AsyncIterator[Audit]:
    settings = audit_settings(database_url, nats_url, tmp_path, keys)
    database = Database(database_url, "audit", pool_size=2, max_overflow=2)
    async with (
        running(APP, settings) as (_server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        try:
            yield Audit(
                port,
                channel,
                audit_service_pb2_grpc.AuditServiceStub(channel),
                keys,
                database,
                load_signer(settings.audit_checkpoint_key_file),
            )
        finally:
            await database.close()
