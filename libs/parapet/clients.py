"""Typed async clients for every Parapet service, on kit channels (deadline propagation, identity and
request-id forwarding, tracing, round-robin balancing, UNAVAILABLE retried, TLS when configured, keepalive
that notices a vanished peer and reconnects).

Usage, from inside a service::

    async with clients.metering(settings.metering_address, settings) as metering:
        reply = await metering.stub.Reserve(request)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from parapet.audit.v1 import audit_service_pb2_grpc
from parapet.auth.v1 import auth_service_pb2_grpc, tenant_admin_service_pb2_grpc
from parapet.billing.v1 import billing_service_pb2_grpc
from parapet.gateway.v1 import chat_service_pb2_grpc, job_service_pb2_grpc
from parapet.inference.v1 import inference_service_pb2_grpc
from parapet.kit.clients import ServiceClient
from parapet.kit.config import ServiceSettings
from parapet.metering.v1 import metering_service_pb2_grpc
from parapet.moderation.v1 import moderation_service_pb2_grpc
from parapet.retrieval.v1 import retrieval_service_pb2_grpc

if TYPE_CHECKING:  # the async stub types exist only in the generated type stubs
    from parapet.audit.v1.audit_service_pb2_grpc import AuditServiceAsyncStub
    from parapet.auth.v1.auth_service_pb2_grpc import AuthServiceAsyncStub
    from parapet.auth.v1.tenant_admin_service_pb2_grpc import TenantAdminServiceAsyncStub
    from parapet.billing.v1.billing_service_pb2_grpc import BillingServiceAsyncStub
    from parapet.gateway.v1.chat_service_pb2_grpc import ChatServiceAsyncStub
    from parapet.gateway.v1.job_service_pb2_grpc import JobServiceAsyncStub
    from parapet.inference.v1.inference_service_pb2_grpc import InferenceServiceAsyncStub
    from parapet.metering.v1.metering_service_pb2_grpc import MeteringServiceAsyncStub
    from parapet.moderation.v1.moderation_service_pb2_grpc import ModerationServiceAsyncStub
    from parapet.retrieval.v1.retrieval_service_pb2_grpc import RetrievalServiceAsyncStub


def chat(
    target: str, settings: ServiceSettings | None = None, **kw: Any
) -> ServiceClient[ChatServiceAsyncStub]:
    return ServiceClient(chat_service_pb2_grpc.ChatServiceStub, target, settings, **kw)


def jobs(
    target: str, settings: ServiceSettings | None = None, **kw: Any
) -> ServiceClient[JobServiceAsyncStub]:
    return ServiceClient(job_service_pb2_grpc.JobServiceStub, target, settings, **kw)


def auth(
    target: str, settings: ServiceSettings | None = None, **kw: Any
) -> ServiceClient[AuthServiceAsyncStub]:
    return ServiceClient(auth_service_pb2_grpc.AuthServiceStub, target, settings, **kw)


def tenant_admin(
    target: str, settings: ServiceSettings | None = None, **kw: Any
) -> ServiceClient[TenantAdminServiceAsyncStub]:
    return ServiceClient(tenant_admin_service_pb2_grpc.TenantAdminServiceStub, target, settings, **kw)


def retrieval(
    target: str, settings: ServiceSettings | None = None, **kw: Any
) -> ServiceClient[RetrievalServiceAsyncStub]:
    return ServiceClient(retrieval_service_pb2_grpc.RetrievalServiceStub, target, settings, **kw)


def inference(
    target: str, settings: ServiceSettings | None = None, **kw: Any
) -> ServiceClient[InferenceServiceAsyncStub]:
    return ServiceClient(inference_service_pb2_grpc.InferenceServiceStub, target, settings, **kw)


def moderation(
    target: str, settings: ServiceSettings | None = None, **kw: Any
) -> ServiceClient[ModerationServiceAsyncStub]:
    return ServiceClient(moderation_service_pb2_grpc.ModerationServiceStub, target, settings, **kw)


def metering(
    target: str, settings: ServiceSettings | None = None, **kw: Any
) -> ServiceClient[MeteringServiceAsyncStub]:
    return ServiceClient(metering_service_pb2_grpc.MeteringServiceStub, target, settings, **kw)


def audit(
    target: str, settings: ServiceSettings | None = None, **kw: Any
) -> ServiceClient[AuditServiceAsyncStub]:
    return ServiceClient(audit_service_pb2_grpc.AuditServiceStub, target, settings, **kw)


def billing(
    target: str, settings: ServiceSettings | None = None, **kw: Any
) -> ServiceClient[BillingServiceAsyncStub]:
    return ServiceClient(billing_service_pb2_grpc.BillingServiceStub, target, settings, **kw)
