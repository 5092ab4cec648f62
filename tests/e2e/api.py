"""A running suite's public RPCs as a product uses them: the operator sets up tenants, their users ingest
documents and chat. Synchronous gRPC, as a plain client would call it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import grpc

from parapet.auth.v1 import (
    api_key_pb2,
    auth_service_pb2,
    auth_service_pb2_grpc,
    tenant_admin_service_pb2,
    tenant_admin_service_pb2_grpc,
    tenant_pb2,
    tenant_policy_pb2,
    user_pb2,
)
from parapet.cli.layout import HomeLayout
from parapet.gateway.v1 import chat_pb2, chat_service_pb2, chat_service_pb2_grpc
from parapet.kit.errors import ErrorDetails, error_details
from parapet.retrieval.v1 import document_pb2, retrieval_service_pb2, retrieval_service_pb2_grpc
from tests.e2e.support import Launcher

Metadata = tuple[tuple[str, str], ...]
USER = "alice"
GROUP = "staff"


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def internal_token(auth_channel: grpc.Channel, api_key: str) -> str:
    """The internal token an API key is exchanged for: what the services behind the gateway accept."""
    auth = auth_service_pb2_grpc.AuthServiceStub(auth_channel)
    reply = auth.Authenticate(auth_service_pb2.AuthenticateRequest(api_key=api_key), timeout=10)
    return str(reply.token)


def operator(up: Launcher, auth_channel: grpc.Channel) -> Metadata:
    """The platform operator ``parapet up`` bootstrapped, whose key it wrote under its home."""
    key = HomeLayout(up.home).operator_key_file.read_text().strip()
    return bearer(internal_token(auth_channel, key))


@dataclass(frozen=True)
class TenantKey:
    tenant_id: str
    api_key: str
    api_key_id: str


def create_tenant(
    auth_channel: grpc.Channel,
    operator: Metadata,
    tenant_id: str,
    policy: tenant_policy_pb2.TenantPolicy | None = None,
) -> TenantKey:
    """A tenant whose user USER (role admin, group GROUP) has an API key; ``policy`` is merged into the
    tenant's default policy before the key exists, so no service ever caches the default one."""
    admin = tenant_admin_service_pb2_grpc.TenantAdminServiceStub(auth_channel)
    a = tenant_admin_service_pb2
    admin.CreateTenant(
        a.CreateTenantRequest(tenant=tenant_pb2.Tenant(tenant_id=tenant_id, display_name=tenant_id)),
        metadata=operator,
        timeout=10,
    )
    if policy is not None:
        current = admin.GetTenantPolicy(
            a.GetTenantPolicyRequest(tenant_id=tenant_id), metadata=operator, timeout=10
        ).policy
        merged = tenant_policy_pb2.TenantPolicy()
        merged.CopyFrom(current)
        merged.MergeFrom(policy)
        admin.UpdateTenantPolicy(
            a.UpdateTenantPolicyRequest(tenant_id=tenant_id, policy=merged, expected_version=current.version),
            metadata=operator,
            timeout=10,
        )
    admin.CreateUser(
        a.CreateUserRequest(
            tenant_id=tenant_id,
            user=user_pb2.User(
                user_id=USER, roles=["admin"], groups=[GROUP], kind=user_pb2.USER_KIND_SERVICE_ACCOUNT
            ),
        ),
        metadata=operator,
        timeout=10,
    )
    created = admin.CreateApiKey(
        a.CreateApiKeyRequest(tenant_id=tenant_id, api_key=api_key_pb2.ApiKey(user_id=USER)),
        metadata=operator,
        timeout=10,
    )
    return TenantKey(tenant_id, str(created.secret), str(created.api_key.api_key_id))


def ingest(retrieval_channel: grpc.Channel, token: str, documents: Mapping[str, tuple[str, str]]) -> None:
    """``documents``: id -> (title, text), readable by GROUP; each must be newly created."""

    def requests() -> Iterator[retrieval_service_pb2.IngestDocumentsRequest]:
        for document_id, (title, text) in documents.items():
            yield retrieval_service_pb2.IngestDocumentsRequest(
                document=document_pb2.Document(
                    document_id=document_id, title=title, mime_type="text/plain", access_groups=[GROUP]
                ),
                content=text.encode(),
            )

    reply = retrieval_service_pb2_grpc.RetrievalServiceStub(retrieval_channel).IngestDocuments(
        requests(), metadata=bearer(token), timeout=60
    )
    created = retrieval_service_pb2.DOCUMENT_OUTCOME_CREATED
    assert [r.outcome for r in reply.results] == [created] * len(documents), reply


@dataclass
class Exchange:
    """One StreamChat call as its caller saw it: the request id header, the events, how it ended."""

    request_id: str
    events: list[chat_service_pb2.StreamChatResponse] = field(default_factory=list)
    error: ErrorDetails | None = None
    cancelled: bool = False  # by the caller, midway

    @property
    def kinds(self) -> list[str]:
        return [str(e.WhichOneof("event")) for e in self.events]

    @property
    def text(self) -> str:
        return "".join(e.text_delta.text for e in self.events if e.HasField("text_delta"))

    @property
    def summary(self) -> chat_pb2.ChatSummary | None:
        summaries = [e.summary for e in self.events if e.HasField("summary")]
        assert len(summaries) <= 1, self.kinds
        return summaries[0] if summaries else None

    def notices(self, kind: chat_pb2.NoticeType.ValueType) -> list[chat_pb2.Notice]:
        return [e.notice for e in self.events if e.HasField("notice") and e.notice.type == kind]


def stream_chat(
    gateway_channel: grpc.Channel,
    api_key: str,
    request: chat_service_pb2.StreamChatRequest,
    *,
    cancel_after_first_delta: bool = False,
    seconds: float = 60,
) -> Exchange:
    call = chat_service_pb2_grpc.ChatServiceStub(gateway_channel).StreamChat(
        request, metadata=bearer(api_key), timeout=seconds
    )
    # The gateway sends the request id before anything else, so even a refused call has one.
    exchange = Exchange(request_id=dict(call.initial_metadata())["x-request-id"])
    try:
        for event in call:
            exchange.events.append(event)
            if cancel_after_first_delta and event.HasField("text_delta"):
                call.cancel()
                exchange.cancelled = True
                break
    except grpc.RpcError as error:
        exchange.error = error_details(error)
    return exchange
