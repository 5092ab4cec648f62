"""Text holding U+0000 is refused by the kit before the servicer runs, with the field's path: in nested,
repeated and map fields, and in each message of a client stream; bytes fields are not text."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from google.protobuf import struct_pb2, wrappers_pb2

from parapet.gateway.v1 import chat_service_pb2
from parapet.inference.v1 import message_pb2
from parapet.kit.errors import error_details
from parapet.kit.nul import nul_field
from parapet.kit.testing import StringValue, fast_settings, generic_app, make_test_keys, running
from parapet.retrieval.v1 import retrieval_service_pb2

SERVICE = "test.v1.Nul"


def _chat(*contents: str, **fields: object) -> chat_service_pb2.StreamChatRequest:
    messages = [message_pb2.Message(role=message_pb2.ROLE_USER, content=c) for c in contents]
    return chat_service_pb2.StreamChatRequest(messages=messages, **fields)  # type: ignore[arg-type]


def test_the_path_of_the_first_text_with_a_nul_is_named_at_any_depth() -> None:
    assert nul_field(_chat("hello", "a plain question", model="gpt", metadata={"k": "v"})) is None
    assert nul_field(_chat("hello", "a\x00b")) == "messages[1].content"
    assert nul_field(_chat("hi", model="g\x00pt")) == "model"
    assert nul_field(_chat("hi", metadata={"team": "a\x00"})) == "metadata['team']"
    assert nul_field(_chat("hi", metadata={"te\x00am": "a"})) == "metadata['te\\x00am']"
    query = retrieval_service_pb2.QueryRequest(query="q", document_ids=["d1", "d\x002"])
    assert nul_field(query) == "document_ids[1]"
    nested = struct_pb2.Struct(fields={"a": struct_pb2.Value(string_value="x\x00")})
    assert nul_field(nested) == "fields['a'].string_value"
    assert nul_field(wrappers_pb2.BytesValue(value=b"\x00\x00")) is None  # bytes are not text


async def _echo(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
    return StringValue(value=request.value)


def _handlers(seen: list[str]) -> grpc.GenericRpcHandler:
    async def collect(requests: AsyncIterator[StringValue], context: grpc.aio.ServicerContext) -> StringValue:
        async for request in requests:
            seen.append(request.value)
        return StringValue(value=",".join(seen))

    codec = {
        "request_deserializer": StringValue.FromString,
        "response_serializer": StringValue.SerializeToString,
    }
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo, **codec),
            "Collect": grpc.stream_unary_rpc_method_handler(collect, **codec),
        },
    )


async def test_a_server_refuses_it_in_a_request_and_in_a_client_stream_s_message() -> None:
    keys = make_test_keys()
    seen: list[str] = []
    app = generic_app(_handlers(seen), keys=keys, service_names=(SERVICE,))
    async with (
        running(app, fast_settings()) as (_, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        codec = {
            "request_serializer": StringValue.SerializeToString,
            "response_deserializer": StringValue.FromString,
        }
        echo = channel.unary_unary(f"/{SERVICE}/Echo", **codec)
        assert (await echo(StringValue(value="fine"), metadata=keys.metadata())).value == "fine"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await echo(StringValue(value="a\x00b"), metadata=keys.metadata())
        details = error_details(refused.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT and details.reason == "REQUEST_INVALID"
        assert details.bad_request is not None
        assert [v.field for v in details.bad_request.field_violations] == ["value"]
        # On a method that is not public, the kit's authentication comes first.
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await echo(StringValue(value="a\x00b"))
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED

        collect = channel.stream_unary(f"/{SERVICE}/Collect", **codec)

        async def messages() -> AsyncIterator[StringValue]:
            for value in ("one", "t\x00wo", "three"):
                yield StringValue(value=value)

        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            await collect(messages(), metadata=keys.metadata())
        assert streamed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert seen == ["one"]  # the servicer read the first message, never the second
