"""The two clients of the gateway benchmark, each timing one streamed answer.

- ``http``: an OpenAI chat-completions stream over raw httpx (one pooled ``AsyncClient``), used alike for the
  upstream called directly and for LiteLLM, so those two differ only in what is on the other end. Raw httpx
  rather than the ``openai`` SDK because the SDK builds a pydantic object per chunk: at hundreds of streams per
  second that cost lands in the load generator and would blur what the targets cost.
- ``gateway``: Parapet's ``ChatService.StreamChat`` through its generated grpc.aio stub on one channel, the way a
  product team calls it, with the caller's API key as ``authorization: Bearer``.

Both report the first content token and the end of the stream, and fail (raise) on an incomplete answer.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import grpc.aio
import httpx

from parapet.gateway.v1 import chat_pb2, chat_service_pb2, chat_service_pb2_grpc
from parapet.inference.v1 import cache_pb2, message_pb2

OVERHEAD_METADATA = "parapet-overhead-ms"


class IncompleteStreamError(RuntimeError):
    """The stream ended without content or without its end marker."""


@dataclass(frozen=True)
class Target:
    """Where one scenario sends its requests (JSON-serialisable: it travels to the generator process)."""

    name: str
    kind: str  # "http" or "gateway"
    address: str  # base URL (http) or host:port (gateway)
    api_key: str
    model: str
    question: str
    retrieval: bool = False

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Target:
        return cls(**data)


class StreamClient:
    """A client holding one connection pool or channel for all its streams; ``async with`` closes it."""

    async def stream(self) -> Timing:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> StreamClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@dataclass(frozen=True)
class Timing:
    """One finished stream, as ``time.perf_counter()`` instants."""

    first_token: float
    end: float
    overhead_ms: float | None = None


class HttpStreamClient(StreamClient):
    """OpenAI-format streaming over httpx: POST ``/chat/completions`` and read the server-sent events."""

    def __init__(self, target: Target) -> None:
        self._target = target
        self._body = json.dumps(
            {
                "model": target.model,
                "messages": [{"role": "user", "content": target.question}],
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        ).encode()
        self._client = httpx.AsyncClient(
            base_url=target.address,
            headers={"authorization": f"Bearer {target.api_key}", "content-type": "application/json"},
            # Open loop at hundreds per second keeps that many streams open: never queue in the pool.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=2000),
            timeout=httpx.Timeout(60.0),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def stream(self) -> Timing:
        first = 0.0
        done = False
        async with self._client.stream("POST", "/chat/completions", content=self._body) as response:
            if response.status_code != 200:
                await response.aread()
                raise IncompleteStreamError(f"HTTP {response.status_code}")
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    continue
                if not first:
                    choices = json.loads(data).get("choices") or [{}]
                    if (choices[0].get("delta") or {}).get("content"):
                        first = time.perf_counter()
        end = time.perf_counter()
        if not first or not done:
            raise IncompleteStreamError("no content" if not first else "no [DONE]")
        return Timing(first, end)


class GatewayStreamClient(StreamClient):
    """Parapet's ``StreamChat`` on one grpc.aio channel."""

    def __init__(self, target: Target) -> None:
        mode = chat_pb2.RETRIEVAL_MODE_ENABLED if target.retrieval else chat_pb2.RETRIEVAL_MODE_DISABLED
        self._request = chat_service_pb2.StreamChatRequest(
            messages=[message_pb2.Message(role=message_pb2.ROLE_USER, content=target.question)],
            model=target.model,
            retrieval=chat_pb2.RetrievalOptions(mode=mode),
            feature="benchmark",
            # Every request asks the same question: a cache hit would skip the upstream that every other
            # scenario waits for.
            cache_mode=cache_pb2.CACHE_MODE_DISABLED,
        )
        self._metadata = (("authorization", f"Bearer {target.api_key}"),)
        self._channel = grpc.aio.insecure_channel(target.address)
        self._stub = chat_service_pb2_grpc.ChatServiceStub(self._channel)

    async def aclose(self) -> None:
        await self._channel.close()

    async def stream(self) -> Timing:
        first = 0.0
        summary = False
        call = self._stub.StreamChat(self._request, metadata=self._metadata, timeout=60)
        async for message in call:
            kind = message.WhichOneof("event")
            if kind == "text_delta" and not first:
                first = time.perf_counter()
            elif kind == "summary":
                summary = True
        end = time.perf_counter()
        if not first or not summary:
            raise IncompleteStreamError("no content" if not first else "no summary")
        overhead = None
        for key, value in await call.trailing_metadata() or ():
            if key == OVERHEAD_METADATA:
                overhead = float(value)
        return Timing(first, end, overhead)


def make_client(target: Target) -> StreamClient:
    if target.kind == "http":
        return HttpStreamClient(target)
    if target.kind == "gateway":
        return GatewayStreamClient(target)
    raise ValueError(f"unknown target kind {target.kind!r}")
