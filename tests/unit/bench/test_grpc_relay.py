"""The gateway benchmark's floor, the bare gRPC relay: run as the benchmark runs it (its own processes, one relay
and two in a row, in front of the upstream emulator), it answers StreamChat with the upstream's whole answer and
usage, and the benchmark's client times it."""

from __future__ import annotations

import contextlib

import grpc.aio
import pytest

from bench.gateway_clients import Target, make_client
from bench.gateway_procs import PYTHON, announced_child
from parapet.gateway.v1 import chat_service_pb2, chat_service_pb2_grpc
from parapet.inference.v1 import message_pb2
from parapet.upstream import UpstreamServer

QUESTION = "How many vacation days do new employees get?"


async def _answer(address: str, model: str) -> tuple[str, chat_service_pb2.StreamChatResponse]:
    async with grpc.aio.insecure_channel(address) as channel:
        call = chat_service_pb2_grpc.ChatServiceStub(channel).StreamChat(
            chat_service_pb2.StreamChatRequest(
                messages=[message_pb2.Message(role=message_pb2.ROLE_USER, content=QUESTION)], model=model
            ),
            timeout=30,
        )
        messages = [message async for message in call]
    text = "".join(m.text_delta.text for m in messages if m.WhichOneof("event") == "text_delta")
    return text, messages[-1]


@pytest.mark.parametrize("depth", [1, 2])
async def test_the_relay_streams_the_upstreams_whole_answer(depth: int) -> None:
    async with contextlib.AsyncExitStack() as stack:
        upstream = await stack.enter_async_context(UpstreamServer(record=False))
        relay = PYTHON, "-m", "bench.grpc_relay"
        child = await stack.enter_async_context(
            announced_child(*relay, "--upstream", upstream.base_url + "/v1")
        )
        if depth == 2:
            inner = str(child.announcement["address"])
            child = await stack.enter_async_context(announced_child(*relay, "--inner", inner))
        address = str(child.announcement["address"])

        # A streaming upstream (chunks 5 ms apart) and an instant one (the chunks at once, merged by the relay).
        for model in ("gpt-4o-mini;chunk_delay=0.005", "gpt-4o-mini"):
            text, last = await _answer(address, model)
            assert text == f"You said: {QUESTION}"
            assert last.WhichOneof("event") == "summary"
            assert last.summary.usage.prompt_tokens > 0 and last.summary.usage.completion_tokens > 0

        target = Target("e", "gateway", address, "none", "gpt-4o-mini", QUESTION)
        async with make_client(target) as client:
            timing = await client.stream()
        assert 0 < timing.first_token <= timing.end
