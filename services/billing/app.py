"""The billing service as the kit runs it (`parapet serve billing`).

Its RPCs are pending until issue #8 (metering and billing): each answers UNIMPLEMENTED with a message naming that
issue, never a made-up result.
"""

from pathlib import Path

from parapet.billing.v1 import billing_service_pb2, billing_service_pb2_grpc
from parapet.kit.app import ServiceApp
from parapet.kit.config import ServiceSettings
from parapet.kit.pending import GeneratedService, register_pending

BILLING_SERVICE = GeneratedService(billing_service_pb2, billing_service_pb2_grpc, "BillingService")

APP = ServiceApp(
    name="billing",
    settings_type=ServiceSettings,
    register=register_pending((BILLING_SERVICE,), "issue #8 (metering and billing)"),
    service_names=(BILLING_SERVICE.full_name,),
    uses_database=True,
    uses_nats=True,
    migrations=Path(__file__).parent / "migrations",
)
