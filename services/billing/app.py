"""The billing service as the kit runs it (`parapet serve billing`).

The reference consumer of usage events: a durable JetStream consumer folds them into per-tenant rollups
exactly once; ListRollups and GetInvoicePreview read them.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc

from parapet.billing.v1 import billing_service_pb2_grpc
from parapet.events.usage import USAGE_STREAM
from parapet.kit import periodic
from parapet.kit.app import Resources, ServiceApp
from services.billing import pruning
from services.billing.consumer import UsageConsumer
from services.billing.servicer import BillingServicer
from services.billing.settings import BillingSettings
from services.metering.policy import policy_source


async def register(server: grpc.aio.Server, resources: Resources[BillingSettings]) -> None:
    settings = resources.settings
    database = resources.require_database()
    policies = policy_source(settings)
    resources.cleanup.push_async_callback(policies.close)
    billing_service_pb2_grpc.add_BillingServiceServicer_to_server(BillingServicer(database, policies), server)
    consumer = UsageConsumer(
        database,
        resources.require_bus(),
        durable=settings.consumer_name,
        batch_size=settings.fetch_batch_size,
        fetch_timeout=settings.fetch_timeout_seconds,
        ack_wait=settings.ack_wait_seconds,
        max_ack_pending=settings.max_ack_pending,
    )
    resources.spawn(consumer.run(), name="usage-consumer")
    sweeper = pruning.ProcessedIdSweeper(
        database,
        resources.require_bus(),
        timedelta(seconds=settings.processed_event_retention_seconds),
    )
    resources.spawn(
        periodic.every(
            settings.processed_event_sweep_interval_seconds, sweeper.sweep, "processed_events sweep"
        ),
        name="processed-events-sweeper",
    )


APP = ServiceApp(
    name="billing",
    settings_type=BillingSettings,
    register=register,
    service_names=("parapet.billing.v1.BillingService",),
    uses_database=True,
    uses_nats=True,
    migrations=Path(__file__).parent / "migrations",
    # Declared here too, so billing may start before metering; the same spec, so neither undoes the other.
    streams=(USAGE_STREAM,),
)
