"""The inference engine's merge of deltas that piled up behind a send: text joined in order, summary apart."""

from __future__ import annotations

from parapet.inference.v1 import completion_pb2, generation_pb2, inference_service_pb2
from services.inference.engine import merge_deltas

Response = inference_service_pb2.StreamCompleteResponse


def delta(text: str) -> Response:
    return Response(text_delta=completion_pb2.TextDelta(text=text))


def summary() -> Response:
    return Response(summary=completion_pb2.CompletionSummary(finish_reason=generation_pb2.FINISH_REASON_STOP))


def test_neighbouring_deltas_become_one_in_order() -> None:
    merged = merge_deltas([delta("You"), delta(" said:"), delta(" hello")])
    assert merged == [delta("You said: hello")]


def test_a_summary_is_never_merged_and_keeps_its_place() -> None:
    merged = merge_deltas([delta("a"), delta("b"), summary()])
    assert merged == [delta("ab"), summary()]
    assert merge_deltas([summary(), delta("x"), delta("y")]) == [summary(), delta("xy")]
