"""The governed chat through the whole suite as processes (`parapet up`): two tenants with overlapping documents
each see only their own, a streaming chat end to end from Python and the same chat from the Node.js client."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from parapet.auth.v1 import (
    api_key_pb2,
    auth_service_pb2,
    auth_service_pb2_grpc,
    tenant_admin_service_pb2,
    tenant_admin_service_pb2_grpc,
    tenant_pb2,
    user_pb2,
)
from parapet.cli import registry
from parapet.gateway.v1 import chat_pb2, chat_service_pb2, chat_service_pb2_grpc
from parapet.inference.v1 import generation_pb2, message_pb2
from parapet.retrieval.v1 import document_pb2, retrieval_service_pb2, retrieval_service_pb2_grpc
from tests.e2e.support import LaunchUp
from tests.e2e.test_parapet_up import STARTUP_BOUND, STOP_BOUND, run_node_client

DOCUMENTS = {
    "acme": "The vault code of the Acme office is seven four two. Visitors sign in at the front desk.",
    "globex": "The vault code of the Globex office is nine nine one. Visitors sign in at the loading dock.",
}


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _token(auth: auth_service_pb2_grpc.AuthServiceStub, api_key: str) -> str:
    reply = auth.Authenticate(auth_service_pb2.AuthenticateRequest(api_key=api_key), timeout=10)
    return str(reply.token)


def _tenant(
    admin: tenant_admin_service_pb2_grpc.TenantAdminServiceStub,
    operator: tuple[tuple[str, str], ...],
    name: str,
) -> str:
    admin.CreateTenant(
        tenant_admin_service_pb2.CreateTenantRequest(
            tenant=tenant_pb2.Tenant(tenant_id=name, display_name=name)
        ),
        metadata=operator,
        timeout=10,
    )
    admin.CreateUser(
        tenant_admin_service_pb2.CreateUserRequest(
            tenant_id=name,
            user=user_pb2.User(
                user_id="alice", roles=["admin"], groups=["staff"], kind=user_pb2.USER_KIND_SERVICE_ACCOUNT
            ),
        ),
        metadata=operator,
        timeout=10,
    )
    created = admin.CreateApiKey(
        tenant_admin_service_pb2.CreateApiKeyRequest(
            tenant_id=name, api_key=api_key_pb2.ApiKey(user_id="alice")
        ),
        metadata=operator,
        timeout=10,
    )
    return str(created.secret)


def _ingest(channel: grpc.Channel, token: str, text: str) -> None:
    def requests() -> Iterator[retrieval_service_pb2.IngestDocumentsRequest]:
        # The same document id in both tenants: isolation must not rest on ids being distinct.
        yield retrieval_service_pb2.IngestDocumentsRequest(
            document=document_pb2.Document(
                document_id="office-handbook",
                title="Office handbook",
                mime_type="text/plain",
                access_groups=["staff"],
            ),
            content=text.encode(),
        )

    reply = retrieval_service_pb2_grpc.RetrievalServiceStub(channel).IngestDocuments(
        requests(), metadata=_bearer(token), timeout=60
    )
    assert [r.outcome for r in reply.results] == [retrieval_service_pb2.DOCUMENT_OUTCOME_CREATED], reply


def _stream(
    chat: chat_service_pb2_grpc.ChatServiceStub, api_key: str, question: str
) -> list[chat_service_pb2.StreamChatResponse]:
    request = chat_service_pb2.StreamChatRequest(
        messages=[message_pb2.Message(role=message_pb2.ROLE_USER, content=question)],
        retrieval=chat_pb2.RetrievalOptions(mode=chat_pb2.RETRIEVAL_MODE_ENABLED, top_k=3),
    )
    return list(chat.StreamChat(request, metadata=_bearer(api_key), timeout=30))


def test_tenants_see_only_their_documents_from_python_and_node(launch_up: LaunchUp) -> None:
    up = launch_up()
    up.wait_serving(registry.SERVICES, STARTUP_BOUND)
    (operator_key_file,) = up.home.rglob("operator.key")
    address = up.ports.service_address
    with (
        grpc.insecure_channel(address(registry.get("auth"))) as auth_channel,
        grpc.insecure_channel(address(registry.get("retrieval"))) as retrieval_channel,
        grpc.insecure_channel(address(registry.get("gateway"))) as gateway_channel,
    ):
        auth = auth_service_pb2_grpc.AuthServiceStub(auth_channel)
        admin = tenant_admin_service_pb2_grpc.TenantAdminServiceStub(auth_channel)
        operator = _bearer(_token(auth, operator_key_file.read_text().strip()))
        keys = {name: _tenant(admin, operator, name) for name in DOCUMENTS}
        for name, text in DOCUMENTS.items():
            _ingest(retrieval_channel, _token(auth, keys[name]), text)

        chat = chat_service_pb2_grpc.ChatServiceStub(gateway_channel)
        for name, other in (("acme", "globex"), ("globex", "acme")):
            events = _stream(chat, keys[name], "What is the vault code of the office?")
            kinds = [e.WhichOneof("event") for e in events]
            assert kinds[-1] == "summary" and kinds.count("summary") == 1, kinds
            assert kinds.index("citation") < kinds.index("text_delta"), kinds
            text = "".join(e.text_delta.text for e in events if e.HasField("text_delta"))
            own, foreign = DOCUMENTS[name].split(" is ")[1][:10], DOCUMENTS[other].split(" is ")[1][:10]
            assert own in text and foreign not in text, (name, text)
            assert {e.citation.document_id for e in events if e.HasField("citation")} == {"office-handbook"}
            assert events[-1].summary.finish_reason == generation_pb2.FINISH_REASON_STOP

    result = run_node_client(
        address(registry.get("gateway")),
        {"PARAPET_API_KEY": keys["acme"], "PARAPET_QUESTION": "What is the vault code of the office?"},
    )
    stream = result["stream"]
    assert isinstance(stream, dict), result
    assert stream.get("status") == "OK" and "error" not in stream, result
    assert "seven four two" in str(stream["text"]) and "nine nine one" not in str(stream["text"]), result
    kinds = stream["kinds"]
    assert isinstance(kinds, list) and kinds[-1] == "summary" and kinds.count("summary") == 1, result
    assert stream["citations"] == ["office-handbook"], result
    summary = stream["summary"]
    assert isinstance(summary, dict) and summary["finish_reason"] == "FINISH_REASON_STOP", result
    trailers = stream["trailers"]
    assert isinstance(trailers, dict) and float(trailers["parapet-overhead-ms"]) > 0, result

    assert up.terminate(STOP_BOUND) == 0, up.logs()
