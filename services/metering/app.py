"""The metering service as the kit runs it (`parapet serve metering`).

Its RPCs are pending until issue #8 (metering and billing): each answers UNIMPLEMENTED with a message naming that
issue, never a made-up result.
"""

from pathlib import Path

from parapet.kit.app import ServiceApp
from parapet.kit.config import ServiceSettings
from parapet.kit.pending import GeneratedService, register_pending
from parapet.metering.v1 import metering_service_pb2, metering_service_pb2_grpc

METERING_SERVICE = GeneratedService(metering_service_pb2, metering_service_pb2_grpc, "MeteringService")

APP = ServiceApp(
    name="metering",
    settings_type=ServiceSettings,
    register=register_pending((METERING_SERVICE,), "issue #8 (metering and billing)"),
    service_names=(METERING_SERVICE.full_name,),
    uses_database=True,
    uses_nats=True,
    migrations=Path(__file__).parent / "migrations",
)
