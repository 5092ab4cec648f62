"""The audit service as the kit runs it (`parapet serve audit`).

Its RPCs are pending until issue #9 (audit and observability): each answers UNIMPLEMENTED with a message naming that
issue, never a made-up result.
"""

from pathlib import Path

from parapet.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from parapet.kit.app import ServiceApp
from parapet.kit.config import ServiceSettings
from parapet.kit.pending import GeneratedService, register_pending

AUDIT_SERVICE = GeneratedService(audit_service_pb2, audit_service_pb2_grpc, "AuditService")

APP = ServiceApp(
    name="audit",
    settings_type=ServiceSettings,
    register=register_pending((AUDIT_SERVICE,), "issue #9 (audit and observability)"),
    service_names=(AUDIT_SERVICE.full_name,),
    uses_database=True,
    uses_nats=True,
    migrations=Path(__file__).parent / "migrations",
)
