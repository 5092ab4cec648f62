"""The emulator's HTTP/1.1 server: keep-alive, JSON answers and chunked server-sent events on plain asyncio.

Plain asyncio rather than a web framework because the faults need the raw connection (close it before the
answer, cut a chunked stream without its terminator) and because the gateway's benchmark uses this server as a
zero-latency upstream, where framework overhead would blur what Parapet adds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from parapet.upstream.faults import FAULT_HEADER, Fault, parse_fault, split_model
from parapet.upstream.wire import (
    Api,
    StreamEncoder,
    Usage,
    error_body,
    full_response,
    read_prompt,
    usage_counts,
)

log = logging.getLogger(__name__)

_ROUTES: dict[str, Api] = {
    "/v1/chat/completions": "openai",
    "/chat/completions": "openai",
    "/v1/messages": "anthropic",
}
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
}
_MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the emulator received it."""

    arrival: float  # time.monotonic() when its headers were read
    api: Api
    model: str  # without the fault spec
    headers: Mapping[str, str]
    body: dict[str, Any]
    fault: Fault
    faulted: bool  # whether the fault was applied (``times`` may have run out)


@dataclass
class UpstreamServer:
    """``async with UpstreamServer() as upstream:`` serves on ``upstream.base_url`` (127.0.0.1, a free port)."""

    host: str = "127.0.0.1"
    port: int = 0
    record: bool = True  # benchmarks turn recording off
    requests: list[RecordedRequest] = field(default_factory=list)
    # Upstream model names (without a fault spec) that answer 503 until removed: a provider outage that a
    # test starts and ends while the clients keep the same model names (a spec in the name cannot change).
    outages: set[str] = field(default_factory=set)
    _server: asyncio.base_events.Server | None = None
    _applied: Counter[str] = field(default_factory=Counter)
    _connections: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> UpstreamServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def reset(self) -> None:
        """Forget recorded requests and how often each ``times=N`` fault was applied."""
        self.requests.clear()
        self._applied.clear()

    def requests_for(self, model: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.model == model]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            # The server is stopping: this connection's task ends quietly with it.
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection is done."""
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _MAX_HEADER_BYTES:
            return False
        arrival = time.monotonic()
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body_bytes = await reader.readexactly(int(headers.get("content-length", "0")))
        keep_alive = headers.get("connection", "").lower() != "close"
        api = _ROUTES.get(path.split("?", 1)[0])
        if method != "POST" or api is None:
            self._write(writer, 404, b'{"error":{"message":"not found"}}', keep_alive)
            return keep_alive
        try:
            body = json.loads(body_bytes or b"{}")
            model, spec = split_model(str(body.get("model", "")))
            fault = parse_fault(spec, headers.get(FAULT_HEADER, ""))
        except ValueError as exc:
            self._write(writer, 400, json.dumps({"error": {"message": str(exc)}}).encode(), keep_alive)
            return keep_alive
        body["model"] = model
        key = f"{model};{spec};{headers.get(FAULT_HEADER, '')}"
        faulted = fault.times is None or self._applied[key] < fault.times
        if faulted and fault.times is not None:
            self._applied[key] += 1
        if self.record:
            self.requests.append(RecordedRequest(arrival, api, model, headers, body, fault, faulted))
        active = (
            fault
            if faulted
            else Fault(  # what the answer says, kept; only the fault goes
                omit_usage=fault.omit_usage,
                reply=fault.reply,
                finish=fault.finish,
                prompt_tokens=fault.prompt_tokens,
                cache_read=fault.cache_read,
                cache_write=fault.cache_write,
            )
        )
        if model in self.outages:
            active = replace(active, status=503, retry_after=None)
        if active.reset:
            writer.transport.abort()
            return False
        if active.status is not None:
            extra = {} if active.retry_after is None else {"retry-after": f"{active.retry_after:g}"}
            body_out = error_body(api, active.status, active.error_type)
            self._write(writer, active.status, body_out, keep_alive, extra)
            return keep_alive
        return await self._answer(writer, api, body, active, keep_alive)

    async def _answer(
        self, writer: asyncio.StreamWriter, api: Api, body: dict[str, Any], fault: Fault, keep_alive: bool
    ) -> bool:
        prompt = read_prompt(api, body)
        reply = fault.reply if fault.reply is not None else f"You said: {prompt.last_user_text}"
        usage = None if fault.omit_usage else _reported(usage_counts(prompt, reply), fault)
        if not prompt.stream:
            if fault.first_token_delay:
                await asyncio.sleep(fault.first_token_delay)
            self._write(writer, 200, full_response(api, prompt, reply, fault.finish, usage), keep_alive)
            return keep_alive
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        encoder = StreamEncoder(api, prompt)
        self._chunk(writer, encoder.start(usage))
        await writer.drain()
        words = reply.split(" ")
        for index, word in enumerate(words):
            if index == fault.cut_after:
                await writer.drain()
                writer.transport.abort()
                return False
            if index == fault.malformed_after:
                self._chunk(writer, encoder.malformed())
                await writer.drain()
                writer.transport.abort()
                return False
            if index == fault.error_after:
                break
            delay = fault.first_token_delay if index == 0 else fault.chunk_delay
            if delay:
                await asyncio.sleep(delay)
            self._chunk(writer, encoder.delta(word if index == 0 else " " + word))
            await writer.drain()
        # An error event ends the answer where it was (or after all of it); the HTTP exchange completes either way.
        ending = (
            encoder.finish(fault.finish, usage)
            if fault.error_after is None
            else encoder.error(fault.error_type)
        )
        self._chunk(writer, ending)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return keep_alive

    @staticmethod
    def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    @staticmethod
    def _write(
        writer: asyncio.StreamWriter,
        status: int,
        payload: bytes,
        keep_alive: bool,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            "content-type: application/json",
            f"content-length: {len(payload)}",
            f"connection: {'keep-alive' if keep_alive else 'close'}",
            *(f"{k}: {v}" for k, v in (extra or {}).items()),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)


async def serve_forever(host: str, port: int) -> None:
    """Run until cancelled (``python -m parapet.upstream``)."""
    async with UpstreamServer(host=host, port=port, record=False) as upstream:
        print(
            json.dumps({"event": "serving", "service": "upstream", "base_url": upstream.base_url}), flush=True
        )
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()


def _reported(counted: Usage, fault: Fault) -> Usage:
    """The usage to report: the emulator's own count, or the fault's prompt count and cache split."""
    prompt = counted.prompt if fault.prompt_tokens is None else fault.prompt_tokens
    return replace(counted, prompt=prompt, cache_read=fault.cache_read, cache_write=fault.cache_write)
