"""Reserve latency: the atomic check-and-hold a request pays before its model runs (target p99 <= 2 ms);
and Settle, which turns each hold into the ledger row, its usage event and the budgets' spend.

The metering service runs as a real process (kit, identity check on every call, its relay and sweeper)
pinned to CPU 0, on a PostgreSQL with default durability (fsync on) and NATS; Reserve's own transaction
commits asynchronously (docs/metering.md says why). Each Reserve checks and holds three budgets (tenant
month cost, user day tokens, API key day tokens) and two rate limits (tenant and key) in one statement. The
client, pinned to CPU 1, calls one at a time, then with 16 in flight; then it settles the reservations of
the first phase one at a time (each Settle commits synchronously, and the relay publishes its usage event to
NATS: its CPU is counted with the Settle's).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import grpc.aio

from bench.children import cpu_seconds, pin
from bench.metering_support import infrastructure, service_process, write_files
from bench.report import table, write_section
from bench.stats import LatencySummary
from parapet.auth.v1 import tenant_policy_pb2 as tp
from parapet.kit.identity import Principal
from parapet.kit.testing import make_test_keys
from parapet.metering.v1 import metering_service_pb2 as pb
from parapet.metering.v1 import metering_service_pb2_grpc
from parapet.usage.v1 import money_pb2, token_usage_pb2

TENANT = "bench"
CALLS = 3000
WARMUP = 300
CONCURRENCY = 16
BIG = 10**15


def _policy() -> tp.TenantPolicy:
    return tp.TenantPolicy(
        budgets=[
            tp.Budget(
                budget_id="month-cost",
                scope=tp.BUDGET_SCOPE_TENANT,
                window=tp.BUDGET_WINDOW_MONTH,
                cost_limit=money_pb2.Money(currency_code="USD", amount_micros=BIG),
                soft_limit_percent=80,
            ),
            tp.Budget(
                budget_id="user-day", scope=tp.BUDGET_SCOPE_USER, window=tp.BUDGET_WINDOW_DAY, token_limit=BIG
            ),
            tp.Budget(
                budget_id="key-day",
                scope=tp.BUDGET_SCOPE_API_KEY,
                window=tp.BUDGET_WINDOW_DAY,
                token_limit=BIG,
            ),
        ],
        rate_limits=[
            tp.RateLimit(scope=tp.RATE_LIMIT_SCOPE_TENANT, requests_per_minute=BIG, tokens_per_minute=BIG),
            tp.RateLimit(scope=tp.RATE_LIMIT_SCOPE_API_KEY, requests_per_minute=BIG),
        ],
    )


def _settlement(i: int, reservation_id: str) -> pb.SettleRequest:
    return pb.SettleRequest(
        reservation_id=reservation_id,
        request_id=f"bench-{i}",
        model="m",
        provider="openai",
        usage=token_usage_pb2.TokenUsage(prompt_tokens=700, completion_tokens=300),
        cost=money_pb2.Money(currency_code="USD", amount_micros=2000),
    )


def _request(i: int) -> pb.ReserveRequest:
    return pb.ReserveRequest(
        request_id=f"bench-{i}",
        model="m",
        estimated_tokens=1200,
        estimated_cost=money_pb2.Money(currency_code="USD", amount_micros=2400),
    )


async def main() -> None:
    keys = make_test_keys()
    pin(1)
    with tempfile.TemporaryDirectory() as tmp, infrastructure(Path(tmp)) as infra:
        env = write_files(infra.directory, keys, {TENANT: _policy()})
        async with (
            service_process("metering", infra, env, cpu=0) as (port, pid),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
            who = keys.metadata(Principal(tenant_id=TENANT, subject="u1", api_key_id="k1"))
            samples: list[float] = []
            held: dict[int, str] = {}
            for i in range(WARMUP + CALLS):
                if i == WARMUP:
                    cpu_before = cpu_seconds(pid)
                started = time.perf_counter()
                reply = await stub.Reserve(_request(i), metadata=who)
                if i >= WARMUP:
                    samples.append(time.perf_counter() - started)
                held[i] = reply.reservation.reservation_id
            server_cpu_ms = (cpu_seconds(pid) - cpu_before) * 1000 / CALLS
            sequential = LatencySummary.of(samples)

            next_id = WARMUP + CALLS
            concurrent: list[float] = []
            began = time.perf_counter()

            async def worker() -> None:
                nonlocal next_id
                while next_id < WARMUP + 2 * CALLS:
                    i = next_id
                    next_id += 1
                    started = time.perf_counter()
                    await stub.Reserve(_request(i), metadata=who)
                    concurrent.append(time.perf_counter() - started)

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            rate = len(concurrent) / (time.perf_counter() - began)
            loaded = LatencySummary.of(concurrent)

            settle_samples: list[float] = []
            for i in range(WARMUP + CALLS):
                if i == WARMUP:
                    await asyncio.sleep(1.0)  # the relay done with the warm-up's events
                    cpu_before = cpu_seconds(pid)
                started = time.perf_counter()
                await stub.Settle(_settlement(i, held[i]), metadata=who)
                if i >= WARMUP:
                    settle_samples.append(time.perf_counter() - started)
            await asyncio.sleep(1.0)  # the relay publishes the last events
            settle_cpu_ms = (cpu_seconds(pid) - cpu_before) * 1000 / CALLS
            settled = LatencySummary.of(settle_samples)
    body = "\n\n".join(
        [
            __doc__.split("\n\n", 1)[1].strip() if __doc__ else "",
            table(
                ["load", "calls", "p50 ms", "p95", "p99", "max", "Reserve/s", "metering CPU ms/call"],
                [
                    [
                        "one at a time",
                        str(sequential.count),
                        *sequential.cells(),
                        "-",
                        f"{server_cpu_ms:.3f}",
                    ],
                    [f"{CONCURRENCY} in flight", str(loaded.count), *loaded.cells(), f"{rate:,.0f}", "-"],
                ],
            ),
            table(
                ["Settle", "calls", "p50 ms", "p95", "p99", "max", "metering CPU ms/call (relay included)"],
                [["one at a time", str(settled.count), *settled.cells(), f"{settle_cpu_ms:.3f}"]],
            ),
            "Target: p99 <= 2 ms (issue #8), one at a time. The metering process's CPU per call (kit, "
            "identity, policy, the statement's client side) is what the machine's load adds waiting to.",
        ]
    )
    write_section(
        "metering_reserve",
        "Metering Reserve latency, and Settle",
        ".venv/bin/python -m bench metering_reserve",
        body,
    )
    print(body)
