"""Shared setup of the metering and billing integration tests: settings, policies, identities, stubs."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc.aio
from google.protobuf import json_format
from sqlalchemy import TextClause, text

from parapet.auth.v1 import tenant_policy_pb2
from parapet.billing.v1 import billing_service_pb2_grpc
from parapet.kit.database import Database
from parapet.kit.identity import Principal
from parapet.kit.migrations import migrate
from parapet.kit.testing import TestKeys, running
from parapet.metering.v1 import metering_service_pb2 as mpb
from parapet.metering.v1 import metering_service_pb2_grpc
from parapet.usage.v1 import money_pb2, token_usage_pb2
from services.billing.app import APP as BILLING
from services.billing.settings import BillingSettings
from services.metering.app import APP as METERING
from services.metering.ledger import UsageRecord
from services.metering.settings import MeteringSettings

Stubs = tuple[metering_service_pb2_grpc.MeteringServiceStub, billing_service_pb2_grpc.BillingServiceStub]

FAST = {
    "port": 0,
    "health_interval_seconds": 0.2,
    "health_probe_timeout_seconds": 0.5,
    "shutdown_grace_seconds": 1.0,
    "nats_reconnect_wait_seconds": 0.2,
}


def new_tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def usd(micros: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="USD", amount_micros=micros)


def write_policies(path: Path, policies: dict[str, tenant_policy_pb2.TenantPolicy]) -> Path:
    path.write_text(json.dumps({t: json_format.MessageToDict(p) for t, p in policies.items()}))
    return path


def write_jwks(path: Path, keys: TestKeys) -> Path:
    path.write_text(json.dumps(keys.jwks()))
    return path


def metering_settings(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str, policy_file: Path, **overrides: Any
) -> MeteringSettings:
    values: dict[str, Any] = {
        **FAST,
        "database_url": database_url,
        "nats_url": nats_url,
        "identity_jwks_file": write_jwks(tmp_path / "jwks.json", keys),
        "policy_file": policy_file,
        "relay_interval_seconds": 0.05,
        "sweep_interval_seconds": 0.2,
    }
    values.update(overrides)
    return MeteringSettings(**values)


def billing_settings(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str, policy_file: Path, **overrides: Any
) -> BillingSettings:
    values: dict[str, Any] = {
        **FAST,
        "database_url": database_url,
        "nats_url": nats_url,
        "identity_jwks_file": write_jwks(tmp_path / "jwks.json", keys),
        "policy_file": policy_file,
    }
    values.update(overrides)
    return BillingSettings(**values)


def caller(
    keys: TestKeys, tenant: str, subject: str = "alice", *, api_key_id: str = "", roles: tuple[str, ...] = ()
) -> tuple[tuple[str, str], ...]:
    principal = Principal(
        tenant_id=tenant,
        subject=subject,
        roles=roles,
        api_key_id=api_key_id,
        credential_type="api_key" if api_key_id else "",
    )
    return keys.metadata(principal)


def reader_policy(**fields: Any) -> tenant_policy_pb2.TenantPolicy:
    """A policy whose role "analyst" grants usage.read, plus ``fields`` (budgets, rate_limits)."""
    from parapet.auth.v1 import permission_pb2

    return tenant_policy_pb2.TenantPolicy(
        roles=[
            tenant_policy_pb2.RoleDefinition(
                role="analyst", permissions=[permission_pb2.PERMISSION_USAGE_READ]
            )
        ],
        **fields,
    )


async def ledger_and_rollups(
    database_url: str, tenant: str
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Per day x model x provider x feature sums from the metering ledger and from billing's rollups."""
    from sqlalchemy import text

    from parapet.kit.database import Database

    database = Database(database_url, "metering")
    try:
        async with database.session() as session:
            ledger = (
                await session.execute(
                    text(
                        """
                        SELECT (occur_time AT TIME ZONE 'UTC')::date, model, provider, feature, count(*),
                               sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens), sum(cost_micros)
                        FROM metering.usage_ledger WHERE tenant_id = :t GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
                        """
                    ),
                    {"t": tenant},
                )
            ).all()
            rollups = (
                await session.execute(
                    text(
                        """
                        SELECT day, model, provider, feature, request_count, prompt_tokens, completion_tokens,
                               cached_tokens, cost_micros
                        FROM billing.rollups WHERE tenant_id = :t ORDER BY 1, 2, 3, 4
                        """
                    ),
                    {"t": tenant},
                )
            ).all()
    finally:
        await database.close()
    return [tuple(r) for r in ledger], [tuple(r) for r in rollups]


async def wait_until_rollups_match(
    database_url: str, tenant: str, expected_events: int, within: float = 60.0
) -> None:
    """Poll until billing's rollups equal the ledger exactly (and hold ``expected_events`` requests)."""
    import asyncio
    import time

    deadline = time.monotonic() + within
    while True:
        ledger, rollups = await ledger_and_rollups(database_url, tenant)
        counted = sum(int(r[4]) for r in rollups)
        if rollups == ledger and counted == expected_events:
            return
        assert counted <= expected_events, (
            f"rollups count {counted} > {expected_events} events: double counting"
        )
        if time.monotonic() > deadline:
            raise AssertionError(
                f"rollups never matched the ledger: {counted}/{expected_events}\n{ledger}\n{rollups}"
            )
        await asyncio.sleep(0.2)


@asynccontextmanager
async def suite(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str, policy_file: Path
) -> AsyncIterator[Stubs]:
    async with AsyncExitStack() as stack:
        _m, metering_port = await stack.enter_async_context(
            running(METERING, metering_settings(tmp_path, keys, database_url, nats_url, policy_file))
        )
        _b, billing_port = await stack.enter_async_context(
            running(BILLING, billing_settings(tmp_path, keys, database_url, nats_url, policy_file))
        )
        m = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{metering_port}"))
        b = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{billing_port}"))
        yield metering_service_pb2_grpc.MeteringServiceStub(m), billing_service_pb2_grpc.BillingServiceStub(b)


def settle(i: int, model: str, feature: str, micros: int) -> mpb.SettleRequest:
    return mpb.SettleRequest(
        request_id=f"s-{i}",
        model=model,
        provider="openai",
        feature=feature,
        usage=token_usage_pb2.TokenUsage(
            prompt_tokens=10 + i, completion_tokens=i, cached_tokens=i % 3, estimated=i % 5 == 0
        ),
        cost=usd(micros),
    )


PLATFORM = "parapet"  # MeteringSettings.auth_platform_tenant_id's default, as auth's


def platform_policy() -> tenant_policy_pb2.TenantPolicy:
    """The platform tenant's roles as auth defines them: ``platform-admin`` holds platform.admin, ``admin``
    only the tenant permissions (so a platform tenant admin is no platform operator)."""
    from parapet.auth.v1 import permission_pb2

    return tenant_policy_pb2.TenantPolicy(
        roles=[
            tenant_policy_pb2.RoleDefinition(role="admin", permissions=[permission_pb2.PERMISSION_ADMIN]),
            tenant_policy_pb2.RoleDefinition(
                role="platform-admin",
                permissions=[permission_pb2.PERMISSION_ADMIN, permission_pb2.PERMISSION_PLATFORM_ADMIN],
            ),
        ]
    )


def operator(keys: TestKeys) -> tuple[tuple[str, str], ...]:
    """A platform operator's call metadata (role ``platform-admin`` of the platform tenant)."""
    return caller(keys, PLATFORM, "operator", roles=("platform-admin",))


async def plan_without_seqscan(database: Database, statement: TextClause, params: dict[str, Any]) -> str:
    """The plan PostgreSQL chooses for ``statement`` (a ``TextClause``) when it may not scan a table
    sequentially: whether it can use an index at all, whatever the table's size and statistics in the test
    database. Nothing is executed (EXPLAIN without ANALYZE) and the transaction is rolled back."""
    async with database.transaction() as session:
        await session.execute(text("SET LOCAL enable_seqscan = off"))
        rows = await session.execute(text("EXPLAIN " + statement.text), params)
        plan = "\n".join(str(row[0]) for row in rows)
        await session.rollback()
    return plan


def uses_index(plan: str, index: str) -> bool:
    """Whether ``plan`` (EXPLAIN's text) reads through ``index``."""
    return (
        re.search(rf"(Index Scan using|Index Only Scan using|Bitmap Index Scan on) {index}\b", plan)
        is not None
    )


SERVICES = Path(__file__).resolve().parents[3] / "services"


@asynccontextmanager
async def migrated_database(database_url: str, service: str) -> AsyncIterator[Database]:
    """``service``'s schema migrated to head, and a database handle on it (closed afterwards)."""
    await migrate(database_url, service, SERVICES / service / "migrations")
    database = Database(database_url, service)
    try:
        yield database
    finally:
        await database.close()


def usage(
    tenant: str,
    request_id: str,
    reservation_id: str,
    prompt: int,
    completion: int,
    occur: datetime | None = None,
) -> UsageRecord:
    """A settled usage record of alice's (support, gpt-4o-mini, USD), now unless ``occur`` says when."""
    return UsageRecord(
        tenant_id=tenant,
        request_id=request_id,
        user_id="alice",
        api_key_id="",
        reservation_id=reservation_id,
        feature="support",
        model="gpt-4o-mini",
        requested_model="gpt-4o-mini",
        provider="openai",
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=0,
        estimated=False,
        cost_micros=1234,
        currency_code="USD",
        cached=False,
        latency_micros=5000,
        occur_time=occur or datetime.now(UTC),
        labels={"team": "support"},
    )
