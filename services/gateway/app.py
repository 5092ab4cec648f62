"""The gateway service as the kit runs it (`parapet serve gateway`): the governed chat (ChatService) and
async jobs (JobService, with job workers in the same process unless disabled), one flow for both."""

from pathlib import Path

import grpc.aio

from parapet.events.audit import AUDIT_STREAM
from parapet.gateway.v1 import chat_service_pb2, chat_service_pb2_grpc, job_service_pb2, job_service_pb2_grpc
from parapet.kit.app import Resources, ServiceApp
from parapet.kit.pending import GeneratedService
from services.gateway.chat_bounds import ChatBounds
from services.gateway.flow import ChatFlow
from services.gateway.identity import Authenticator
from services.gateway.jobs.wiring import register_jobs
from services.gateway.servicer import ChatServicer
from services.gateway.settings import GatewaySettings
from services.gateway.tenant_slots import TenantSlots

CHAT_SERVICE = GeneratedService(chat_service_pb2, chat_service_pb2_grpc, "ChatService")
JOB_SERVICE = GeneratedService(job_service_pb2, job_service_pb2_grpc, "JobService")


async def register(server: grpc.aio.Server, resources: Resources[GatewaySettings]) -> None:
    flow = await ChatFlow.open(resources)
    authenticator = Authenticator(flow.peers, resources.settings)
    flow.on_tenant_change.append(authenticator.invalidate_tenant)
    flow.on_reset.append(authenticator.clear)
    settings = resources.settings
    bounds = ChatBounds(settings.gateway_chat_max_seconds, settings.gateway_send_timeout_seconds)
    slots = TenantSlots(settings.gateway_tenant_max_concurrent_chats)
    chat = ChatServicer(authenticator, flow, bounds, slots)
    chat_service_pb2_grpc.add_ChatServiceServicer_to_server(chat, server)
    await register_jobs(server, resources, flow, chat.caller)


APP = ServiceApp(
    name="gateway",
    settings_type=GatewaySettings,
    register=register,
    service_names=(
        CHAT_SERVICE.full_name,
        JOB_SERVICE.full_name,
    ),
    uses_database=True,
    uses_nats=True,
    migrations=Path(__file__).parent / "migrations",
    # Audit records go to the AUDIT stream; declared by every producer with the same configuration.
    streams=(AUDIT_STREAM,),
    # Callers present their own API key or OIDC token, which the gateway exchanges at the auth service;
    # they hold no internal token, so the kit's identity check does not apply here.
    public_methods=frozenset(
        f"/{s.full_name}/{m.name}" for s in (CHAT_SERVICE, JOB_SERVICE) for m in s.descriptor.methods
    ),
)
