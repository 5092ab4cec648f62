"""The metering service as the kit runs it (`parapet serve metering`).

Budgets, rate limits and reservations (Reserve/Settle/Release), the usage ledger with its transactional
outbox, GetUsage; background tasks per replica: the outbox relay and the reservation sweeper, which also prunes
the tables' old rows (budget counters among them).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path

import grpc

from parapet.events.audit import AUDIT_STREAM
from parapet.events.usage import USAGE_STREAM
from parapet.kit.app import Resources, ServiceApp
from parapet.kit.database import Database
from parapet.metering.v1 import metering_service_pb2_grpc
from services.metering import pruning, reservations
from services.metering.policy import policy_source
from services.metering.relay import OutboxRelay
from services.metering.servicer import MeteringServicer
from services.metering.settings import MeteringSettings

log = logging.getLogger(__name__)


async def sweep(database: Database, settings: MeteringSettings) -> None:
    """Expire overdue reservations (freeing their holds) and delete garbage rows, forever."""
    outbox = timedelta(seconds=settings.outbox_retention_seconds)
    ended = timedelta(seconds=settings.reservation_retention_seconds)
    counters = pruning.budget_counter_retention(settings)
    while True:
        try:
            while await reservations.expire_due(database) > 0:
                pass
            await pruning.prune(database, outbox=outbox, reservations=ended, budget_counters=counters)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reservation sweep failed; retrying")
        await asyncio.sleep(settings.sweep_interval_seconds)


async def register(server: grpc.aio.Server, resources: Resources[MeteringSettings]) -> None:
    settings = resources.settings
    database = resources.require_database()
    policies = policy_source(settings)
    resources.cleanup.push_async_callback(policies.close)
    relay = OutboxRelay(
        database,
        resources.require_bus(),
        batch_size=settings.relay_batch_size,
        interval=settings.relay_interval_seconds,
        ack_timeout=settings.relay_ack_timeout_seconds,
    )
    assert settings.database_url is not None  # uses_database: the kit refuses to start without one
    fast = reservations.reserve_engine(settings.database_url, database.schema)
    resources.cleanup.push_async_callback(fast.dispose)
    servicer = MeteringServicer(database, fast, policies, relay, settings, resources.require_bus())
    metering_service_pb2_grpc.add_MeteringServiceServicer_to_server(servicer, server)
    for worker in range(settings.relay_workers):
        resources.spawn(relay.run(), name=f"outbox-relay-{worker}")
    resources.spawn(sweep(database, settings), name="reservation-sweeper")


APP = ServiceApp(
    name="metering",
    settings_type=MeteringSettings,
    register=register,
    service_names=("parapet.metering.v1.MeteringService",),
    uses_database=True,
    uses_nats=True,
    migrations=Path(__file__).parent / "migrations",
    streams=(USAGE_STREAM, AUDIT_STREAM),  # AUDIT: a replay is recorded in the operator's trail
)
