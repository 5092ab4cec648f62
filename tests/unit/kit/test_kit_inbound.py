"""Text holding U+0000, and enum numbers their enum does not declare, are refused by the kit before the
servicer runs, with the field's path: in nested, repeated and map fields, and in each message of a client
stream; bytes fields are not text; methods named open to newer enums keep such numbers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from google.protobuf import struct_pb2, wrappers_pb2

from parapet.gateway.v1 import chat_service_pb2
from parapet.inference.v1 import message_pb2
from parapet.kit.errors import error_details
from parapet.kit.inbound import Violation, nul_field, violation
from parapet.kit.testing import StringValue, fast_settings, generic_app, make_test_keys, running
from parapet.retrieval.v1 import retrieval_service_pb2

SERVICE = "test.v1.Inbound"


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


def test_an_undeclared_enum_number_is_named_at_any_depth_and_declared_ones_pass() -> None:
    from parapet.gateway.v1 import chat_pb2, job_pb2, job_service_pb2

    assert violation(job_service_pb2.GetJobRequest(job_id="j", view=job_pb2.JOB_VIEW_FULL)) is None
    assert (
        violation(job_service_pb2.GetJobRequest(view=job_pb2.JOB_VIEW_UNSPECIFIED)) is None
    )  # the servicer's
    found = violation(job_service_pb2.GetJobRequest(view=7))  # type: ignore[arg-type]
    assert found is not None and (found.path, found.enum) == ("view", "parapet.gateway.v1.JobView")
    listing = job_service_pb2.ListJobsRequest(states=[job_pb2.JOB_STATE_QUEUED, 42])  # type: ignore[list-item]
    assert (violation(listing) or Violation("")).path == "states[1]"
    nested = _chat("hi")
    nested.messages[0].role = 99  # type: ignore[assignment]
    assert (violation(nested) or Violation("")).path == "messages[0].role"
    nested.retrieval.mode = chat_pb2.RETRIEVAL_MODE_DISABLED
    assert (violation(nested) or Violation("")).path == "messages[0].role"
    # A NUL and an undeclared number are each checked only when asked for.
    assert violation(nested, enums=False) is None and nul_field(nested) is None
    both = _chat("a\x00b")
    both.messages[0].role = 99  # type: ignore[assignment]
    assert (violation(both, text=False) or Violation("")).path == "messages[0].role"
    error = Violation("view", "parapet.gateway.v1.JobView").error()
    assert (
        error.reason == "REQUEST_INVALID"
        and "view is not a value parapet.gateway.v1.JobView declares" in str(error)
    )


def _view_handlers() -> grpc.GenericRpcHandler:
    from parapet.gateway.v1 import job_service_pb2

    async def view(request: job_service_pb2.GetJobRequest, context: grpc.aio.ServicerContext) -> StringValue:
        return StringValue(value=str(request.view))

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "View": grpc.unary_unary_rpc_method_handler(
                view,
                request_deserializer=job_service_pb2.GetJobRequest.FromString,
                response_serializer=StringValue.SerializeToString,
            )
        },
    )


async def test_a_server_refuses_undeclared_enum_numbers_except_on_open_enum_methods() -> None:
    from parapet.gateway.v1 import job_pb2, job_service_pb2

    keys = make_test_keys()
    method = f"/{SERVICE}/View"
    for open_methods, expected in ((frozenset(), None), (frozenset({method}), "7")):
        app = generic_app(
            _view_handlers(), keys=keys, service_names=(SERVICE,), open_enum_methods=open_methods
        )
        async with (
            running(app, fast_settings()) as (_, port),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            call = channel.unary_unary(
                method,
                request_serializer=job_service_pb2.GetJobRequest.SerializeToString,
                response_deserializer=StringValue.FromString,
            )
            undeclared = job_service_pb2.GetJobRequest(view=7)  # type: ignore[arg-type]
            if expected is None:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(undeclared, metadata=keys.metadata())
                details = error_details(refused.value)
                assert details.code == grpc.StatusCode.INVALID_ARGUMENT and details.bad_request is not None
                assert [v.field for v in details.bad_request.field_violations] == ["view"]
            else:  # kept as it came, for the servicer
                assert (await call(undeclared, metadata=keys.metadata())).value == expected
            declared = job_service_pb2.GetJobRequest(view=job_pb2.JOB_VIEW_FULL)
            assert (await call(declared, metadata=keys.metadata())).value == "2"


async def test_a_request_that_does_not_parse_is_refused_as_invalid_not_unknown() -> None:
    """A string field that is not UTF-8 (a multi-byte character cut between two chunks by a client that
    does not check) or a corrupt wire format: grpc answered UNKNOWN with the parser's message, untyped,
    to a unary call, and a client stream's servicer met the parser's exception (INTERNAL)."""
    keys = make_test_keys()
    seen: list[str] = []
    app = generic_app(_handlers(seen), keys=keys, service_names=(SERVICE,))
    not_utf8 = b"\x0a\x02\xc3\x28"  # StringValue.value: "\xc3" starts a two-byte character "(" cannot end
    async with (
        running(app, fast_settings()) as (_, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        raw = {"request_serializer": bytes, "response_deserializer": StringValue.FromString}
        echo = channel.unary_unary(f"/{SERVICE}/Echo", **raw)
        collect = channel.stream_unary(f"/{SERVICE}/Collect", **raw)

        async def messages() -> AsyncIterator[bytes]:
            yield StringValue(value="one").SerializeToString()
            yield not_utf8

        for call in (echo(not_utf8, metadata=keys.metadata()), echo(b"\xff\xff\xff", metadata=keys.metadata()),
                     collect(messages(), metadata=keys.metadata())):  # fmt: skip
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            details = error_details(refused.value)
            assert details.code == grpc.StatusCode.INVALID_ARGUMENT and details.reason == "REQUEST_INVALID"
            assert "DecodeError" not in (refused.value.details() or "")
        assert seen == ["one"]
        # Authentication still comes first.
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await echo(not_utf8)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
