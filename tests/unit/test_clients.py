"""The typed client of every service reaches that service's RPCs over a real kit channel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import message_factory

from parapet import clients
from parapet.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from parapet.auth.v1 import (
    auth_service_pb2,
    auth_service_pb2_grpc,
    tenant_admin_service_pb2,
    tenant_admin_service_pb2_grpc,
)
from parapet.billing.v1 import billing_service_pb2, billing_service_pb2_grpc
from parapet.gateway.v1 import chat_service_pb2, chat_service_pb2_grpc, job_service_pb2, job_service_pb2_grpc
from parapet.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from parapet.kit.app import ServiceApp
from parapet.kit.config import ServiceSettings
from parapet.kit.errors import error_details
from parapet.kit.pending import GeneratedService, register_pending
from parapet.kit.testing import make_test_keys, running
from parapet.metering.v1 import metering_service_pb2, metering_service_pb2_grpc
from parapet.moderation.v1 import moderation_service_pb2, moderation_service_pb2_grpc
from parapet.retrieval.v1 import retrieval_service_pb2, retrieval_service_pb2_grpc

FACTORIES: dict[str, tuple[Callable[..., Any], GeneratedService]] = {
    "chat": (clients.chat, GeneratedService(chat_service_pb2, chat_service_pb2_grpc, "ChatService")),
    "jobs": (clients.jobs, GeneratedService(job_service_pb2, job_service_pb2_grpc, "JobService")),
    "auth": (clients.auth, GeneratedService(auth_service_pb2, auth_service_pb2_grpc, "AuthService")),
    "tenant_admin": (
        clients.tenant_admin,
        GeneratedService(tenant_admin_service_pb2, tenant_admin_service_pb2_grpc, "TenantAdminService"),
    ),
    "retrieval": (
        clients.retrieval,
        GeneratedService(retrieval_service_pb2, retrieval_service_pb2_grpc, "RetrievalService"),
    ),
    "inference": (
        clients.inference,
        GeneratedService(inference_service_pb2, inference_service_pb2_grpc, "InferenceService"),
    ),
    "moderation": (
        clients.moderation,
        GeneratedService(moderation_service_pb2, moderation_service_pb2_grpc, "ModerationService"),
    ),
    "metering": (
        clients.metering,
        GeneratedService(metering_service_pb2, metering_service_pb2_grpc, "MeteringService"),
    ),
    "audit": (clients.audit, GeneratedService(audit_service_pb2, audit_service_pb2_grpc, "AuditService")),
    "billing": (
        clients.billing,
        GeneratedService(billing_service_pb2, billing_service_pb2_grpc, "BillingService"),
    ),
}


async def test_every_typed_client_reaches_its_own_service() -> None:
    keys = make_test_keys()
    services = tuple(service for _, service in FACTORIES.values())
    app: ServiceApp[ServiceSettings] = ServiceApp(
        name="everything",
        settings_type=ServiceSettings,
        register=register_pending(services, "a test"),
        service_names=tuple(service.full_name for service in services),
        key_source=lambda _settings: keys.key_source(),
    )
    async with running(app, ServiceSettings(port=0, shutdown_grace_seconds=0.5)) as (_, port):
        for name, (factory, service) in FACTORIES.items():
            async with factory(f"127.0.0.1:{port}") as client:
                methods = [m for m in service.descriptor.methods if not m.client_streaming]
                assert methods, name
                for method in service.descriptor.methods:
                    assert callable(getattr(client.stub, method.name)), (name, method.name)
                unary = methods[0]
                request = message_factory.GetMessageClass(unary.input_type)()
                call = getattr(client.stub, unary.name)
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    if unary.server_streaming:
                        async for _ in call(request, metadata=keys.metadata()):
                            pass
                    else:
                        await call(request, metadata=keys.metadata())
                details = error_details(raised.value)
                assert details.code == grpc.StatusCode.UNIMPLEMENTED, name
                assert details.error_info is not None
                assert details.error_info.metadata["method"] == f"/{service.full_name}/{unary.name}"
