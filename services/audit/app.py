"""The audit service as the kit runs it (`parapet serve audit`): the AuditService RPCs, the durable
consumer of the audit stream, and two periodic jobs (signed checkpoints, body retention)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import grpc.aio

from parapet.audit.v1 import audit_service_pb2_grpc
from parapet.auth.v1 import tenant_policy_pb2
from parapet.events.audit import AUDIT_STREAM, REJECTED_STREAM
from parapet.kit import periodic
from parapet.kit.app import Resources, ServiceApp
from services.audit.checkpoints import checkpoint_all
from services.audit.consumer import AuditConsumer, BodyDefaults
from services.audit.retention import drop_expired_bodies
from services.audit.servicer import AuditServicer
from services.audit.settings import AuditSettings
from services.audit.signing import load_signer

log = logging.getLogger(__name__)


def body_defaults(settings: AuditSettings) -> BodyDefaults:
    mode = tenant_policy_pb2.BodyRetention.Value(
        f"BODY_RETENTION_{settings.audit_default_body_retention.upper()}"
    )
    return BodyDefaults(mode=mode, retention_days=settings.audit_default_retention_days)


async def register(server: grpc.aio.Server, resources: Resources[AuditSettings]) -> None:
    settings = resources.settings
    database = resources.require_database()
    signer = load_signer(settings.audit_checkpoint_key_file)
    defaults = body_defaults(settings)
    audit_service_pb2_grpc.add_AuditServiceServicer_to_server(
        AuditServicer(database, resources.require_bus(), signer, defaults), server
    )
    consumer = AuditConsumer(
        database,
        resources.require_bus(),
        defaults,
        durable=settings.audit_consumer_durable,
        batch_size=settings.audit_consumer_batch_size,
    )
    resources.spawn(consumer.run(), name="audit-consumer")
    resources.spawn(
        periodic.every(
            settings.audit_checkpoint_interval_seconds,
            lambda: checkpoint_all(database, signer),
            "checkpoints",
        ),
        name="audit-checkpoints",
    )
    resources.spawn(
        periodic.every(
            settings.audit_retention_interval_seconds,
            lambda: drop_expired_bodies(database, datetime.now(UTC)),
            "retention",
        ),
        name="audit-retention",
    )


APP = ServiceApp(
    name="audit",
    settings_type=AuditSettings,
    register=register,
    service_names=("parapet.audit.v1.AuditService",),
    uses_database=True,
    uses_nats=True,
    migrations=Path(__file__).parent / "migrations",
    streams=(AUDIT_STREAM, REJECTED_STREAM),
    # A record is a fact a producer wrote, perhaps with a newer contract: its enum numbers are kept as they came,
    # as the stream path keeps them (the kit refuses undeclared ones in every other request).
    open_enum_methods=frozenset({"/parapet.audit.v1.AuditService/Record"}),
)
