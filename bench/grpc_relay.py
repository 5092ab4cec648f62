"""The floor of the gateway benchmark: ``ChatService.StreamChat`` served by a bare grpc.aio relay that does nothing
but pass the question to the upstream and its answer back.

No authentication, policy, screening, budget, settlement or audit; no kit (interceptors, deadlines, metrics). What
it does cost is what any Python gRPC gateway on this machine pays, whatever its design: a grpc.aio server wakes
for the call, streams from the upstream over raw httpx (no SDK: the cheapest way Python reads that stream),
and the content chunks go back as gRPC messages, those that piled up behind a send merged into one (with
``parapet.kit.coalesce``, as Parapet's inference merges its deltas). With ``--inner`` the relay calls another
relay over gRPC instead of the upstream, so the pair measures what one more Python process on the path costs:
the shape of the brief's suite, where the gateway calls the inference service that owns the providers.

Run by ``bench.gateway`` as targets (e) and (e2): ``python -m bench.grpc_relay --upstream URL`` or
``--inner HOST:PORT``; it prints ``{"address": "127.0.0.1:PORT"}`` once it serves, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable

import grpc.aio
import httpx

from parapet.gateway.v1 import chat_pb2, chat_service_pb2, chat_service_pb2_grpc
from parapet.inference.v1 import generation_pb2, message_pb2
from parapet.kit.coalesce import coalesced
from parapet.usage.v1 import token_usage_pb2

Request = chat_service_pb2.StreamChatRequest
Response = chat_service_pb2.StreamChatResponse
Relay = Callable[[Request, grpc.aio.ServicerContext], AsyncIterator[Response]]
_ROLES = {message_pb2.ROLE_USER: "user", message_pb2.ROLE_ASSISTANT: "assistant"}


def upstream_relay(base_url: str) -> Relay:
    """Streams the chat from the upstream over raw httpx and relays each content chunk as a text delta, then a
    summary with the usage the upstream reported."""
    client = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(60.0))

    async def stream_chat(request: Request, context: grpc.aio.ServicerContext) -> AsyncIterator[Response]:
        body = {
            "model": request.model,
            "messages": [{"role": _ROLES[m.role], "content": m.content} for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        usage = token_usage_pb2.TokenUsage()

        async def deltas() -> AsyncIterator[Response]:
            async with client.stream("POST", "/chat/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    text = ((chunk.get("choices") or [{}])[0].get("delta") or {}).get("content")
                    if text:
                        yield Response(text_delta=chat_pb2.TextDelta(text=text))
                    if chunk.get("usage"):
                        usage.prompt_tokens = chunk["usage"]["prompt_tokens"]
                        usage.completion_tokens = chunk["usage"]["completion_tokens"]

        async with contextlib.aclosing(coalesced(deltas(), _merge)) as merged:
            async for message in merged:
                yield message
        yield Response(
            summary=chat_pb2.ChatSummary(finish_reason=generation_pb2.FINISH_REASON_STOP, usage=usage)
        )

    return stream_chat


def _merge(messages: list[Response]) -> list[Response]:
    return [Response(text_delta=chat_pb2.TextDelta(text="".join(m.text_delta.text for m in messages)))]


def inner_relay(address: str) -> Relay:
    """Relays each message of another relay's stream, one gRPC process further from the caller."""
    stub = chat_service_pb2_grpc.ChatServiceStub(grpc.aio.insecure_channel(address))

    async def stream_chat(request: Request, context: grpc.aio.ServicerContext) -> AsyncIterator[Response]:
        async for message in stub.StreamChat(request, timeout=60):
            yield message

    return stream_chat


async def serve(make_relay: Callable[[], Relay]) -> None:
    """Serve the relay as ChatService.StreamChat alone (the service's other methods are unimplemented); made
    here, on the running loop, which its channel binds to."""
    relay = make_relay()
    server = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(
        relay, request_deserializer=Request.FromString, response_serializer=Response.SerializeToString
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("parapet.gateway.v1.ChatService", {"StreamChat": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"address": f"127.0.0.1:{port}"}), flush=True)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await stopping.wait()
    await server.stop(grace=1.0)


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_relay", description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--upstream", help="the upstream's OpenAI base URL (ending in /v1)")
    where.add_argument("--inner", help="host:port of another relay to call instead")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = _arguments(sys.argv[1:])
    if arguments.upstream:
        asyncio.run(serve(functools.partial(upstream_relay, arguments.upstream)))
    else:
        asyncio.run(serve(functools.partial(inner_relay, arguments.inner)))
