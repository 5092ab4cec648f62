"""The time a chat waited for inference, counted from the call's start even while the flow was busy elsewhere.
The call is a stand-in: the point is when its messages arrive relative to when the flow reads them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from parapet.inference.v1 import completion_pb2, inference_service_pb2
from services.gateway.inference_stream import InferenceStream


class TimedCall:
    """Messages that arrive after the given delays (seconds, each after the previous), then an optional error."""

    def __init__(self, delays: list[float], error: Exception | None = None) -> None:
        self._delays, self._error = delays, error
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[inference_service_pb2.StreamCompleteResponse]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[inference_service_pb2.StreamCompleteResponse]:
        for n, delay in enumerate(self._delays):
            await asyncio.sleep(delay)
            yield inference_service_pb2.StreamCompleteResponse(
                text_delta=completion_pb2.TextDelta(text=str(n))
            )
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        self.cancelled = True


async def _texts(stream: InferenceStream) -> list[str]:
    return [m.text_delta.text async for m in stream.messages()]


async def test_the_first_message_is_waited_for_from_the_call_start_not_from_the_first_look() -> None:
    stream = InferenceStream(TimedCall([0.05]))
    await asyncio.sleep(1.0)  # busy elsewhere (a budget hold) long after the first message arrived
    assert await _texts(stream) == ["0"]
    assert 0.045 <= stream.waited < 0.5  # its arrival, not the 1 s until the flow looked


async def test_a_flow_that_looks_at_once_waits_for_the_whole_stream() -> None:
    stream = InferenceStream(TimedCall([0.03, 0.03, 0.03]))
    assert await _texts(stream) == ["0", "1", "2"]
    assert 0.085 <= stream.waited < 1.0  # generous: a loaded machine may be slow to resume


async def test_an_empty_stream_and_an_error_before_any_message() -> None:
    assert await _texts(InferenceStream(TimedCall([]))) == []
    with pytest.raises(RuntimeError, match="gone"):
        await _texts(InferenceStream(TimedCall([], RuntimeError("gone"))))


async def test_cancel_stops_the_call_and_the_pending_first_read() -> None:
    call = TimedCall([10.0])
    stream = InferenceStream(call)
    stream.cancel()
    assert call.cancelled
    with pytest.raises(asyncio.CancelledError):
        await _texts(stream)


class AnnouncingCall(TimedCall):
    """A PromptSent after ``announce_after`` seconds (an attempt about to call its provider), then the deltas."""

    def __init__(self, announce_after: float, delays: list[float]) -> None:
        super().__init__(delays)
        self._announce_after = announce_after

    async def _messages(self) -> AsyncIterator[inference_service_pb2.StreamCompleteResponse]:
        await asyncio.sleep(self._announce_after)
        yield inference_service_pb2.StreamCompleteResponse(
            prompt_sent=completion_pb2.PromptSent(model="gpt", provider="openai", prompt_tokens=42)
        )
        async for message in super()._messages():
            yield message


async def test_a_prompt_sent_is_kept_aside_and_the_first_wait_runs_to_the_first_answer() -> None:
    stream = InferenceStream(AnnouncingCall(0.0, [0.05, 0.0]))
    await asyncio.sleep(1.0)  # busy elsewhere: the announcement and the first delta both came meanwhile
    assert await _texts(stream) == ["0", "1"]  # the announcement is not an answer
    assert stream.prompt_sent is not None and stream.prompt_sent.prompt_tokens == 42
    assert 0.045 <= stream.waited < 0.5  # to the first delta's arrival, not to the announcement's


async def test_a_stream_stopped_before_its_first_answer_still_knows_the_prompt_sent() -> None:
    call = AnnouncingCall(0.0, [10.0])
    stream = InferenceStream(call)
    await asyncio.sleep(0.05)
    stream.cancel()  # the caller left while the provider was thinking
    assert stream.prompt_sent is not None and stream.prompt_sent.model == "gpt"
