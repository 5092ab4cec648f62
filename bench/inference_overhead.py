"""What the inference service adds over calling a provider directly, its cache-hit latency, and its cost per call.

Processes: the fault-injecting upstream emulator (zero latency: every chunk written at once) and the load
generator on CPU 1, the inference service (a kit server: identity, logging, tracing interceptors on) on CPU 0.
One stream at a time, interleaved: a direct streamed call with the official `openai` SDK to the upstream, then
the same call through `InferenceService.StreamComplete` (which itself uses the SDK to reach the upstream).
Added latency is the difference of the two distributions' percentiles (end of stream and first token). Then:
exact and paraphrase cache hits end to end; completions/s on one core = 1 / (service CPU s per completion)
with 16 streams in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc.aio
import openai

from bench.children import cpu_seconds, pin, start_child, stop_child
from bench.report import table, write_section
from bench.stats import LatencySummary
from parapet.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from parapet.inference.v1 import cache_pb2, inference_service_pb2, inference_service_pb2_grpc, message_pb2
from parapet.kit import loop as event_loop
from parapet.kit.identity import Principal
from parapet.kit.testing import TestKeys, make_test_keys

SEQUENTIAL = int(os.environ.get("BENCH_INFERENCE_CALLS", "1000"))
WARMUP = 100
CACHE_CALLS = int(os.environ.get("BENCH_INFERENCE_CALLS", "1000"))
CONCURRENCY = 16
THROUGHPUT_SECONDS = 5.0
QUESTION = "Please summarise the onboarding guide for new support engineers in twenty words"  # 20-chunk reply


async def _serve(args: argparse.Namespace) -> None:
    from parapet.kit.testing import running
    from services.inference.app import APP
    from services.inference.settings import InferenceSettings

    settings = InferenceSettings(
        port=0,
        identity_jwks_file=args.serve,
        database_url=args.database_url,
        nats_url=args.nats_url,
        inference_config_file=args.config,
        log_level="WARNING",
        cache_enabled=args.cache,
    )
    async with running(APP, settings) as (_, port):
        print(json.dumps({"port": port}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def _direct(client: openai.AsyncOpenAI) -> tuple[float, float]:
    started = time.perf_counter()
    first = 0.0
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if not first and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
    return time.perf_counter() - started, first - started


async def _through(
    stub: inference_service_pb2_grpc.InferenceServiceStub,
    metadata: Any,
    question: str = QUESTION,
    mode: cache_pb2.CacheMode.ValueType = cache_pb2.CACHE_MODE_DISABLED,
) -> tuple[float, float, Any]:
    request = inference_service_pb2.StreamCompleteRequest(
        messages=[message_pb2.Message(role=message_pb2.ROLE_USER, content=question)],
        model="gpt",
        cache_mode=mode,
        report_prompt_sent=True,  # as the gateway asks: one more message before the provider is called
    )
    started = time.perf_counter()
    first = 0.0
    summary = None
    async for message in stub.StreamComplete(request, metadata=metadata, timeout=10):
        if message.HasField("text_delta"):
            if not first:
                first = time.perf_counter()
        elif message.HasField("summary"):
            summary = message.summary
    return time.perf_counter() - started, first - started, summary


def _minus(a: LatencySummary, b: LatencySummary) -> list[str]:
    return [f"{a.p50 - b.p50:.3f}", f"{a.p95 - b.p95:.3f}", f"{a.p99 - b.p99:.3f}"]


async def _run(tmp: Path, keys: TestKeys, database_url: str, nats_url: str) -> str:
    upstream, info = await start_child("-c", "from parapet.upstream.__main__ import main; main()")
    try:
        return await _against(info["base_url"], tmp, keys, database_url, nats_url)
    finally:
        await stop_child(upstream, stdin_grace=0)  # the emulator stops on SIGTERM, not on stdin


async def _against(base_url: str, tmp: Path, keys: TestKeys, database_url: str, nats_url: str) -> str:
    """The service started against the upstream at ``base_url``, measured; returns the report."""
    config = tmp / "inference.json"
    config.write_text(
        json.dumps(
            {
                "default_model": "gpt",
                "providers": {"openai": {"kind": "openai", "base_url": base_url + "/v1"}},
                "models": [
                    {
                        "name": "gpt",
                        "provider": "openai",
                        "upstream_model": "gpt-4o-mini",
                        "input_price_per_million": "0.15",
                        "output_price_per_million": "0.60",
                    }
                ],
            }
        )
    )
    jwks = tmp / "jwks.json"
    jwks.write_text(json.dumps(keys.jwks()))
    metadata = keys.metadata(Principal(tenant_id="bench", subject="u1", groups=("staff",)))
    serve_args = ["-m", "bench.inference_overhead", "--serve", str(jwks), "--config", str(config)]
    serve_args += ["--database-url", database_url, "--nats-url", nats_url, "--cache"]
    server, port_info = await start_child(*serve_args)
    try:
        client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="bench", max_retries=0)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port_info['port']}") as channel:
            stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
            direct_total, direct_first, via_total, via_first = [], [], [], []
            for i in range(SEQUENTIAL + WARMUP):
                total, first = await _direct(client)
                total_p, first_p, _ = await _through(stub, metadata)
                if i >= WARMUP:
                    direct_total.append(total)
                    direct_first.append(first)
                    via_total.append(total_p)
                    via_first.append(first_p)
            d_total, d_first = LatencySummary.of(direct_total), LatencySummary.of(direct_first)
            p_total, p_first = LatencySummary.of(via_total), LatencySummary.of(via_first)

            # Cache hits: one miss stores the answer, then exact repeats and a paraphrase.
            rw = cache_pb2.CACHE_MODE_READ_WRITE
            question = "How do I reset my password?"
            await _through(stub, metadata, question, rw)
            await asyncio.sleep(1.0)
            hits: dict[str, list[float]] = {"exact": [], "semantic": []}
            for kind, text in (("exact", question), ("semantic", "What is the way to reset my password?")):
                for i in range(CACHE_CALLS + WARMUP):
                    total, _, summary = await _through(stub, metadata, text, rw)
                    assert summary.cache.outcome in (
                        cache_pb2.CACHE_OUTCOME_EXACT_HIT,
                        cache_pb2.CACHE_OUTCOME_SEMANTIC_HIT,
                    ), summary.cache
                    if i >= WARMUP:
                        hits[kind].append(total)
            exact, semantic = LatencySummary.of(hits["exact"]), LatencySummary.of(hits["semantic"])

            # Throughput and service CPU per completion.
            done = 0
            stop_at = time.perf_counter() + THROUGHPUT_SECONDS

            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < stop_at:
                    await _through(stub, metadata)
                    done += 1

            cpu_before = cpu_seconds(server.pid)
            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            elapsed = time.perf_counter() - started
            cpu_per_call = (cpu_seconds(server.pid) - cpu_before) / done
        await client.close()
    finally:
        await stop_child(server)

    rows = [
        ["direct (openai SDK → upstream)", *d_total.cells()[:3], *d_first.cells()[:3]],
        ["through inference (gRPC → service → SDK → upstream)", *p_total.cells()[:3], *p_first.cells()[:3]],
        ["**added by inference**", *_minus(p_total, d_total), *_minus(p_first, d_first)],
    ]
    return "\n\n".join(
        [
            "Service on CPU 0 (kit interceptors on, logging at WARNING, identity token verified per call); "
            "upstream emulator and client on CPU 1; zero-latency upstream streaming a 20-chunk answer with usage. "
            f"{SEQUENTIAL} streams one at a time after {WARMUP} warm-up, direct and through the service "
            "interleaved. Targets: added p50 ≤ 1 ms, first token added ≤ 1 ms, cache hit p99 ≤ 5 ms.",
            table(
                ["path", "stream end p50 ms", "p95", "p99", "first token p50 ms", "p95", "p99"],
                rows,
            ),
            table(
                ["cache hit, end to end", "p50 ms", "p95", "p99", "max"],
                [
                    ["exact (hash fast path)", *exact.cells()],
                    ["semantic (paraphrase; its embedding cached after the first call)", *semantic.cells()],
                ],
            ),
            table(
                [
                    "streams in flight",
                    "completions/s",
                    "service CPU ms/completion",
                    "completions/s on one core",
                ],
                [
                    [
                        str(CONCURRENCY),
                        f"{done / elapsed:,.0f}",
                        f"{cpu_per_call * 1000:.3f}",
                        f"{1 / cpu_per_call:,.0f}",
                    ]
                ],
            ),
        ]
    )


async def main() -> None:
    pin(1)
    keys = make_test_keys()
    with tempfile.TemporaryDirectory(prefix="parapet-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        postgres = EmbeddedPostgres(tmp / "pg", free_port())
        nats = EmbeddedNats(tmp / "nats", free_port())
        postgres.start()
        nats.start()
        try:
            body = await _run(tmp, keys, postgres.url, nats.url)
        finally:
            nats.stop()
            postgres.stop()
    write_section(
        "inference_overhead",
        "Inference: added latency, cache hits, completions per core",
        "make bench  # or: python -m bench inference_overhead",
        body,
    )
    print(body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", type=Path, help="run the service with this JWKS file")
    parser.add_argument("--config", type=Path)
    parser.add_argument("--database-url")
    parser.add_argument("--nats-url")
    parser.add_argument("--cache", action="store_true")
    args = parser.parse_args()
    if args.serve:
        pin(0)
        event_loop.run(_serve(args))  # the service's own loop (uvloop), as `parapet serve` runs it
    else:
        asyncio.run(main())
