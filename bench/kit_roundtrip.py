"""The floor for every later overhead: one loopback round trip through the service kit.

The server is a kit server (the kit's interceptor: tracing, request id and logging, metrics, errors,
deadline, identity with a real Ed25519 token verified on every call) serving a tiny echo service, in its
own process pinned to CPU 0. The load generator runs in this process pinned to CPU 1, over a real channel
(a kit channel for the kit variants, as a service calling another would use). Reported:
- unary and server-streaming (10 messages) latency, one call at a time: p50/p95/p99;
- unary latency when each call comes after 30 ms of idle (as an unloaded chat meets each service), beside a
  plain asyncio TCP echo after the same idle time (the machine's own wake-up cost, without gRPC);
- throughput with 64 calls in flight, and the server's CPU time per call, which is what "calls/s on one
  core" means: 1 / (server CPU seconds per call); and the calling process's CPU time per call;
for plain grpc.aio (what Python gRPC costs at all), the kit on a public method, the full kit, the full kit
on asyncio's own loop (services run on uvloop, `parapet.kit.loop`), and the full kit with spans recorded (an
SDK tracer provider, as with an OTLP endpoint set, exporting nowhere). Servers run on the services' loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
from opentelemetry.sdk.trace import TracerProvider

from bench.children import cpu_seconds, pin, start_child, stop_child
from bench.report import table, write_section
from bench.stats import LatencySummary
from parapet.kit import clients
from parapet.kit import loop as event_loop
from parapet.kit.config import ServiceSettings
from parapet.kit.testing import (
    StringValue,
    TestKeys,
    generic_app,
    make_test_keys,
    running,
    stream_caller,
    string_service,
    unary_caller,
)

SERVICE = "bench.v1.Echo"
STREAM_MESSAGES = 10
SEQUENTIAL_CALLS = 3000
CONCURRENCY = 64
THROUGHPUT_SECONDS = 5.0
# Calls after the processes went idle: one every IDLE_GAP_SECONDS, as an unloaded chat meets each service.
COLD_CALLS = 300
IDLE_GAP_SECONDS = 0.03


VARIANTS = {
    "bare": "grpc.aio alone (no kit): the interpreter's floor",
    "public": "kit, method public (no identity check)",
    "kit": "kit, identity token verified on every call",
    "kit-asyncio": "kit, identity, on asyncio's own loop instead of uvloop",
    "traced": "kit, identity, spans recorded on both sides",
}


async def _serve_bare(handler: grpc.GenericRpcHandler) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"port": port}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(1)


async def _serve(jwks_file: Path, variant: str) -> None:
    """Server side (a child process): print the bound port, serve until stdin closes."""

    async def echo(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
        return request

    async def stream(request: StringValue, context: grpc.aio.ServicerContext) -> AsyncIterator[StringValue]:
        for _ in range(STREAM_MESSAGES):
            yield request

    handler = string_service(SERVICE, unary={"Echo": echo}, server_streaming={"Stream": stream})
    if variant == "bare":
        await _serve_bare(handler)
        return
    variant = variant.removesuffix("-asyncio")  # the same server; only the event loop differs
    public = frozenset({f"/{SERVICE}/Echo", f"/{SERVICE}/Stream"}) if variant == "public" else frozenset()
    app = generic_app(handler, name="bench", service_names=(SERVICE,), public_methods=public)
    # Logging at WARNING: one JSON line per RPC would measure the terminal, not the kit.
    settings = ServiceSettings(port=0, identity_jwks_file=jwks_file, log_level="WARNING")
    provider = TracerProvider() if variant == "traced" else None
    async with running(app, settings, tracer_provider=provider) as (_, port):
        print(json.dumps({"port": port}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def _sequential(call: object, metadata: tuple[tuple[str, str], ...], streaming: bool) -> LatencySummary:
    samples: list[float] = []
    request = StringValue(value="x" * 64)
    for i in range(SEQUENTIAL_CALLS + 200):
        started = time.perf_counter()
        if streaming:
            async for _ in call(request, metadata=metadata):  # type: ignore[operator]
                pass
        else:
            await call(request, metadata=metadata)  # type: ignore[operator]
        if i >= 200:  # warm-up excluded
            samples.append(time.perf_counter() - started)
    return LatencySummary.of(samples)


async def _after_idle(call: object, metadata: tuple[tuple[str, str], ...]) -> LatencySummary:
    """Unary calls one at a time, each after both processes sat idle for IDLE_GAP_SECONDS."""
    samples: list[float] = []
    request = StringValue(value="x" * 64)
    for _ in range(COLD_CALLS):
        await asyncio.sleep(IDLE_GAP_SECONDS)
        started = time.perf_counter()
        await call(request, metadata=metadata)  # type: ignore[operator]
        samples.append(time.perf_counter() - started)
    return LatencySummary.of(samples)


async def _tcp_echo_after_idle() -> tuple[LatencySummary, LatencySummary]:
    """The machine's own wake-up cost, without gRPC: a 64-byte echo over loopback TCP from this process to an
    asyncio echo server (on the services' loop) in another, back to back and after IDLE_GAP_SECONDS idle."""
    server, announced = await start_child("-m", "bench.kit_roundtrip", "--serve-tcp")
    try:
        port = announced["port"]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = b"x" * 64

        async def echo() -> float:
            started = time.perf_counter()
            writer.write(payload)
            await reader.readexactly(len(payload))
            return time.perf_counter() - started

        try:
            for _ in range(200):
                await echo()
            hot = [await echo() for _ in range(SEQUENTIAL_CALLS)]
            cold: list[float] = []
            for _ in range(COLD_CALLS):
                await asyncio.sleep(IDLE_GAP_SECONDS)
                cold.append(await echo())
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    finally:
        await stop_child(server)
    return LatencySummary.of(hot), LatencySummary.of(cold)


async def _serve_tcp() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()


async def _throughput(
    call: object, metadata: tuple[tuple[str, str], ...], server_pid: int
) -> tuple[float, float, float]:
    """(calls per second, server and client CPU milliseconds per call) with CONCURRENCY calls in flight."""
    request = StringValue(value="x" * 64)
    done = 0
    stop_at = 0.0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await call(request, metadata=metadata)  # type: ignore[operator]
            done += 1

    cpu_before, client_cpu_before = cpu_seconds(server_pid), time.process_time()
    started = time.perf_counter()
    stop_at = started + THROUGHPUT_SECONDS
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(server_pid) - cpu_before
    client_cpu = time.process_time() - client_cpu_before
    return done / elapsed, cpu / done * 1000.0, client_cpu / done * 1000.0


async def _measure(variant: str, keys: TestKeys, jwks_file: Path) -> list[list[str]]:
    """One row per measurement of ``variant``: its server in a child process, load from this one."""
    server, announced = await start_child(
        "-m", "bench.kit_roundtrip", "--serve", str(jwks_file), "--variant", variant
    )
    try:
        port = announced["port"]
        metadata = keys.metadata()
        target = f"127.0.0.1:{port}"
        if variant == "bare":
            client_channel = grpc.aio.insecure_channel(target)
        else:
            tracing = TracerProvider() if variant == "traced" else None
            client_channel = clients.channel(target, tracer_provider=tracing, default_timeout=None)
        async with client_channel as channel:
            unary = unary_caller(channel, f"/{SERVICE}/Echo")
            streaming = stream_caller(channel, f"/{SERVICE}/Stream")
            unary_latency = await _sequential(unary, metadata, streaming=False)
            stream_latency = await _sequential(streaming, metadata, streaming=True)
            cold_latency = await _after_idle(unary, metadata)
            calls_per_second, cpu_ms_per_call, client_ms = await _throughput(unary, metadata, server.pid)
    finally:
        await stop_child(server)
    return [
        [
            VARIANTS[variant],
            *unary_latency.cells()[:3],
            *stream_latency.cells()[:3],
            *cold_latency.cells()[:3:2],
            f"{calls_per_second:,.0f}",
            f"{cpu_ms_per_call:.3f}",
            f"{1000.0 / cpu_ms_per_call:,.0f}",
            f"{client_ms:.3f}",
        ],
    ]


async def main() -> None:
    keys = make_test_keys()
    pin(1)
    load_before = os.getloadavg()[0]
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        jwks_file = Path(tmp) / "jwks.json"
        jwks_file.write_text(json.dumps(keys.jwks()))
        for variant in VARIANTS:
            rows += await _measure(variant, keys, jwks_file)
    tcp_hot, tcp_cold = await _tcp_echo_after_idle()
    body = "\n\n".join(
        [
            "Server: pinned to CPU 0, in its own process; the kit variants run the kit's interceptor "
            "(trace context with the default no-op provider unless spans are recorded, logging at "
            "WARNING, metrics, errors, deadline, identity). Client: pinned to CPU 1, over loopback TCP, "
            "64-byte payloads; a plain grpc.aio channel for the floor, a kit channel (deadline, identity, "
            "request id and trace propagation) for the kit variants. "
            f"Latency: {SEQUENTIAL_CALLS} calls one at a time after 200 warm-up calls; throughput: "
            f"{CONCURRENCY} calls in flight for {THROUGHPUT_SECONDS:.0f} s. CPU per call is the server "
            "process's user+system time over calls served; calls/s on one core is its inverse; client "
            "CPU per call is the calling process's, over the same calls. Load average (1 min) at start "
            f"{load_before:.1f}, at end {os.getloadavg()[0]:.1f}, on {os.cpu_count()} cores (other work "
            "on the machine inflates every figure alike).",
            table(
                [
                    "server",
                    "unary p50 ms",
                    "p95",
                    "p99",
                    f"stream ({STREAM_MESSAGES} msgs) p50 ms",
                    "p95",
                    "p99",
                    "unary after idle p50 ms",
                    "p99",
                    "calls/s",
                    "server CPU ms/call",
                    "calls/s on one core",
                    "client CPU ms/call",
                ],
                rows,
            ),
            f"**After idle.** An unloaded chat meets every service after it sat idle, and waking an idle "
            f"process costs far more than a call between busy ones: the 'after idle' columns are {COLD_CALLS} "
            f"unary calls each after {IDLE_GAP_SECONDS * 1000:.0f} ms without traffic. Without gRPC, a "
            "64-byte echo over loopback TCP from this process to an asyncio echo server in another takes "
            f"{tcp_hot.p50:.3f} ms p50 back "
            f"to back and {tcp_cold.p50:.3f} ms p50 ({tcp_cold.p99:.3f} p99) after the same idle time: that is "
            "the machine's own wake-up cost (scheduler and, on a VM, the idle virtual CPU), paid by every "
            "process a call wakes. grpc.aio's larger figure fits a wake-up on more than one thread per "
            "process (its poller thread hands each event to the event loop); that is inferred, not "
            "measured here.",
        ]
    )
    write_section(
        "kit_roundtrip", "Kit round trip (the floor)", "make bench  # or: python -m bench kit_roundtrip", body
    )
    print(body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", type=Path, help="run the server side with this JWKS file")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="kit")
    parser.add_argument("--serve-tcp", action="store_true", help="run the plain TCP echo server")
    args = parser.parse_args()
    if args.serve_tcp:
        pin(0)
        event_loop.run(_serve_tcp())
    elif args.serve:
        pin(0)
        if args.variant.endswith("-asyncio"):
            asyncio.run(_serve(args.serve, args.variant))
        else:
            event_loop.run(_serve(args.serve, args.variant))  # the loop every service process runs on
    else:
        asyncio.run(main())
