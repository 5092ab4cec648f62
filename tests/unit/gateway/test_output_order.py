"""The gateway's in-process output screening when inference's stream breaks: the held-back text is screened
and released first, as if the stream had ended there; then the error counts, unless that text blocked the
answer. Inference's stream is a stand-in here because the point is the exact moment it breaks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from parapet.auth.v1 import tenant_policy_pb2
from parapet.gateway.v1 import chat_service_pb2
from parapet.inference.v1 import completion_pb2, inference_service_pb2
from parapet.kit.identity import Principal
from services.gateway.caller import Caller
from services.gateway.flow import _Output, _Run
from services.gateway.inference_stream import InferenceStream
from services.gateway.output_screening import OutputScreening
from services.gateway.records import Outcome


class BrokenStream:
    """Inference's StreamComplete as the gateway reads it: some deltas, then a gRPC error."""

    def __init__(self, deltas: list[str], error: grpc.aio.AioRpcError) -> None:
        self._deltas, self._error = deltas, error
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[inference_service_pb2.StreamCompleteResponse]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[inference_service_pb2.StreamCompleteResponse]:
        for delta in self._deltas:
            yield inference_service_pb2.StreamCompleteResponse(
                text_delta=completion_pb2.TextDelta(text=delta)
            )
        raise self._error

    def cancel(self) -> None:
        self.cancelled = True


def _error(reason: str) -> grpc.aio.AioRpcError:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="parapet"))
    status = status_pb2.Status(
        code=grpc.StatusCode.UNAVAILABLE.value[0], message="upstream gone", details=[info]
    )
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString())),
        details="upstream gone",
    )


def _output() -> _Output:
    caller = Caller(token="t", principal=Principal(tenant_id="acme", subject="alice"), policy_version=1)
    outcome = Outcome(
        caller=caller,
        request_id="r1",
        request_time=timestamp_pb2.Timestamp(),
        feature="",
        requested_model="gpt",
        labels={},
        retention=tenant_policy_pb2.RetentionPolicy(),
    )
    return _Output(_Run(caller, chat_service_pb2.StreamChatRequest(), "r1", outcome))


async def _screen(output: _Output, policy: tenant_policy_pb2.TenantPolicy, call: BrokenStream) -> str:
    screener = OutputScreening().stream(policy, {})
    return "".join([e.text_delta.text async for e in output.screened(screener, InferenceStream(call))])


async def test_text_held_back_when_the_stream_broke_goes_out_before_the_error() -> None:
    output = _output()
    text = await _screen(
        output, tenant_policy_pb2.TenantPolicy(), BrokenStream(["Your code is 4111"], _error("X"))
    )
    assert text == "Your code is 4111"  # four digits are no card: released at the end, then the error
    assert output._error is not None and output._error.reason == "X"


async def test_providers_gone_after_text_went_out_is_relayed_not_called_a_refusal() -> None:
    """ "No provider is available" is the message for a chat that got nothing; once held-back text went
    out, the caller gets inference's error as it was."""
    output = _output()
    # The one delta is all digits, held back in case a card number goes on: nothing went out before the error.
    text = await _screen(
        output, tenant_policy_pb2.TenantPolicy(), BrokenStream(["4111"], _error("ALL_PROVIDERS_UNAVAILABLE"))
    )
    assert text == "4111"
    assert output._error is not None and output._error.reason == "ALL_PROVIDERS_UNAVAILABLE"
    assert "no cached answer" not in output._error.message


async def test_a_block_in_the_held_back_text_wins_over_the_error() -> None:
    policy = tenant_policy_pb2.TenantPolicy(
        moderation=tenant_policy_pb2.ModerationPolicy(blocked_terms=["project falcon"])
    )
    output = _output()
    text = await _screen(output, policy, BrokenStream(["It is about Project", " Falcon"], _error("X")))
    assert "Falcon" not in text
    assert output._blocked and output._error is None
