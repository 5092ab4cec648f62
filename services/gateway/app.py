"""The gateway service as the kit runs it (`parapet serve gateway`).

Its RPCs are pending until issue #10 (the governed streaming chat): each answers UNIMPLEMENTED with a message naming that
issue, never a made-up result.
"""

from pathlib import Path

from parapet.gateway.v1 import chat_service_pb2, chat_service_pb2_grpc, job_service_pb2, job_service_pb2_grpc
from parapet.kit.app import ServiceApp
from parapet.kit.pending import GeneratedService, register_pending
from services.gateway.settings import GatewaySettings

CHAT_SERVICE = GeneratedService(chat_service_pb2, chat_service_pb2_grpc, "ChatService")
JOB_SERVICE = GeneratedService(job_service_pb2, job_service_pb2_grpc, "JobService")

APP = ServiceApp(
    name="gateway",
    settings_type=GatewaySettings,
    register=register_pending(
        (
            CHAT_SERVICE,
            JOB_SERVICE,
        ),
        "issue #10 (the governed streaming chat)",
    ),
    service_names=(
        CHAT_SERVICE.full_name,
        JOB_SERVICE.full_name,
    ),
    uses_database=True,
    uses_nats=True,
    migrations=Path(__file__).parent / "migrations",
    # Callers present their own API key or OIDC token, which the gateway exchanges at the auth service;
    # they hold no internal token, so the kit's identity check does not apply here.
    public_methods=frozenset(
        f"/{s.full_name}/{m.name}" for s in (CHAT_SERVICE, JOB_SERVICE) for m in s.descriptor.methods
    ),
)
