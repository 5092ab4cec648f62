"""The governed chat through the whole suite as processes (`parapet up`): two tenants with overlapping documents
each see only their own, a streaming chat end to end from Python and the same chat from the Node.js client."""

from __future__ import annotations

import grpc
import pytest

from parapet.cli import registry
from parapet.gateway.v1 import chat_pb2, chat_service_pb2
from parapet.inference.v1 import generation_pb2, message_pb2
from tests.e2e.api import create_tenant, ingest, internal_token, operator, stream_chat
from tests.e2e.support import LaunchUp
from tests.e2e.test_parapet_up import STARTUP_BOUND, STOP_BOUND, run_node_client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DOCUMENTS = {
    "acme": "The vault code of the Acme office is seven four two. Visitors sign in at the front desk.",
    "globex": "The vault code of the Globex office is nine nine one. Visitors sign in at the loading dock.",
}


def _question(text: str) -> chat_service_pb2.StreamChatRequest:
    return chat_service_pb2.StreamChatRequest(
        messages=[message_pb2.Message(role=message_pb2.ROLE_USER, content=text)],
        retrieval=chat_pb2.RetrievalOptions(mode=chat_pb2.RETRIEVAL_MODE_ENABLED, top_k=3),
    )


def test_tenants_see_only_their_documents_from_python_and_node(launch_up: LaunchUp) -> None:
    up = launch_up()
    up.wait_serving(registry.SERVICES, STARTUP_BOUND)
    address = up.ports.service_address
    with (
        grpc.insecure_channel(address(registry.get("auth"))) as auth_channel,
        grpc.insecure_channel(address(registry.get("retrieval"))) as retrieval_channel,
        grpc.insecure_channel(address(registry.get("gateway"))) as gateway_channel,
    ):
        admin = operator(up, auth_channel)
        keys = {name: create_tenant(auth_channel, admin, name).api_key for name in DOCUMENTS}
        for name, text in DOCUMENTS.items():
            # The same document id in both tenants: isolation must not rest on ids being distinct.
            ingest(
                retrieval_channel,
                internal_token(auth_channel, keys[name]),
                {"office-handbook": ("Office handbook", text)},
            )

        for name, other in (("acme", "globex"), ("globex", "acme")):
            answer = stream_chat(
                gateway_channel, keys[name], _question("What is the vault code of the office?")
            )
            kinds = answer.kinds
            assert answer.error is None and kinds[-1] == "summary" and kinds.count("summary") == 1, kinds
            assert kinds.index("citation") < kinds.index("text_delta"), kinds
            own, foreign = DOCUMENTS[name].split(" is ")[1][:10], DOCUMENTS[other].split(" is ")[1][:10]
            assert own in answer.text and foreign not in answer.text, (name, answer.text)
            citations = {e.citation.document_id for e in answer.events if e.HasField("citation")}
            assert citations == {"office-handbook"}
            assert answer.summary is not None
            assert answer.summary.finish_reason == generation_pb2.FINISH_REASON_STOP

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
