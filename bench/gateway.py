"""The headline benchmark (issue #10): what Parapet's governed chat adds over calling the provider directly, and how
it compares with the LiteLLM proxy in front of the same provider, on one machine. ``make bench-gateway``.

Processes, all on this machine and unpinned (the OS shares its cores among them, as in a real deployment):
the upstream emulator (``parapet.upstream``), Parapet's whole suite from ``parapet up`` (eight services,
PostgreSQL, NATS), LiteLLM's proxy with one and with two workers (its own venv, ``bench/litellm/``), and a load
generator process per run (``bench.gateway_load``). Targets:

(a) the upstream called directly; (b) the gateway's StreamChat with retrieval off; (b2) the same for a tenant whose
policy allows person names, so moderation skips its NER model; (c) retrieval on, over five ingested documents;
(d1, d2) LiteLLM with 1 and 2 workers; (e) the floor: a bare grpc.aio relay of StreamChat to the upstream over raw
httpx, doing nothing else (``bench.grpc_relay``), and (e2) a second such relay in front of it, one Python
gRPC process more on the path, as Parapet's gateway has inference in front of the upstream.

Regimes: unloaded (zero-latency upstream, one stream at a time, targets interleaved), then open-loop load at
fixed rates against an upstream that waits 50 ms and then streams 20 chunks 10 ms apart. Knobs (environment):
``BENCH_GATEWAY_CALLS`` (unloaded streams per target, default 500), ``BENCH_GATEWAY_SECONDS`` (per rate,
default 10), ``BENCH_GATEWAY_RATES`` (default 10,20,30,40,50,60,70,80,100,200,300,400), ``BENCH_GATEWAY_LITELLM_WORKERS``
(default 1,2), ``BENCH_GATEWAY_TARGETS`` (default a,b,b2,c,d,e).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from pathlib import Path

from bench.gateway_clients import Target
from bench.gateway_litellm import LiteLLM, ensure_venv, litellm_proxy
from bench.gateway_procs import PYTHON, Child, ProcessGroup, announced_child, tree, wait_settled
from bench.gateway_report import Measured, body
from bench.gateway_results import TargetLoad
from bench.gateway_runs import Scenario, one_at_a_time, open_loop
from bench.gateway_suite import (
    INSTANT_MODEL,
    NAMES_TENANT,
    STREAMING_FAULT,
    STREAMING_MODEL,
    TENANT,
    UPSTREAM_MODEL,
    Suite,
    parapet_suite,
)
from bench.report import write_section
from parapet.embedded import free_port

CALLS = int(os.environ.get("BENCH_GATEWAY_CALLS", "500"))
WARMUP = 100
BASELINE_CALLS = 40
SECONDS = float(os.environ.get("BENCH_GATEWAY_SECONDS", "10"))
RATES = [
    float(r)
    for r in os.environ.get("BENCH_GATEWAY_RATES", "10,20,30,40,50,60,70,80,100,200,300,400").split(",")
]
LITELLM_WORKERS = [int(w) for w in os.environ.get("BENCH_GATEWAY_LITELLM_WORKERS", "1,2").split(",") if w]
PARAPET_SCENARIOS = (
    ("b", "Parapet, retrieval off", False, TENANT),
    ("b2", "Parapet, retrieval off, names allowed (no NER)", False, NAMES_TENANT),
    ("c", "Parapet, retrieval on", True, TENANT),
)
# Which of a, b, b2, c, d, e to run (a always runs: it is every other target's reference; e runs e and e2).
TARGETS = set(os.environ.get("BENCH_GATEWAY_TARGETS", "a,b,b2,c,d,e").split(",")) | {"a"}
# 18 words: the emulator echoes "You said: <question>", 20 chunks.
QUESTION = (
    "How many vacation days do new employees receive in their first year according to the employee handbook?"
)
COMMAND = "make bench-gateway  # or: python -m bench gateway"
METHOD = """\
One run of `make bench-gateway` on one machine. Processes, none pinned: the upstream emulator
(`python -m parapet.upstream`, OpenAI wire format, usage included); Parapet's whole suite from `parapet up` on a
free base port with its own home (eight services, embedded PostgreSQL and NATS; logging at WARNING); LiteLLM's
proxy (`litellm[proxy]==1.108.7` in `.venv-litellm/`, `bench/litellm/config.yaml`) with 1 and with 2 uvicorn
workers; and a fresh load-generator process per run (`bench/gateway_load.py`, asyncio).

- (a) the upstream directly and (d) LiteLLM are called with the same client code: raw httpx streaming of
  `/chat/completions` (one pooled client; not the `openai` SDK, whose per-chunk pydantic objects would load the
  generator). (b) and (c) are called like a product team would: the generated grpc.aio stub of
  `ChatService.StreamChat`, one channel, the tenant user's API key as `authorization: Bearer`.
- Parapet runs its full flow per request: API key authentication (cached), authorization, input screening,
  budget reservation (a tenant monthly cost budget and a per-key daily token budget, tenant and key rate limits),
  inference (semantic cache off by request: every request asks the same question), output screening while
  streaming, settlement and audit. (b2) is a second tenant with the same policy except that person names are
  allowed, so input screening skips moderation's NER model (its costliest detector). (c) also retrieves from
  five ingested documents.
- LiteLLM, as its production page recommends where it applies offline: master key on (`LITELLM_MASTER_KEY`),
  `LITELLM_LOCAL_MODEL_COST_MAP=True`, `LITELLM_LOG=ERROR`, JSON logs, `proxy_batch_write_at: 60`,
  `simple-shuffle` routing; no database and no Redis, so no virtual keys, spend logs, budgets or shared rate
  limits: it does less per request than Parapet does.
- (e) is the floor of any Python gRPC gateway here: `bench/grpc_relay.py`, a bare grpc.aio server whose
  StreamChat streams the chat from the upstream over raw httpx (as the direct client does) and sends the
  content chunks back as text deltas (those that piled up behind a send merged into one, as Parapet's
  inference merges them), then a summary; no kit, SDK, authentication, policy, screening, budget, settlement
  or audit. (e2) is a second relay in front of it: one more Python gRPC process on the path, as Parapet's
  gateway calls inference, which calls the upstream. Both are called with (b)'s client code.
- Latency of a stream: from its (scheduled) start to its end; first token: to the first content delta.
  A rate is **held** when nothing failed and its p99 is at most twice the target's p99 one stream at a time
  against the same streaming upstream."""


def _http(name: str, base_url: str, api_key: str, model: str) -> Target:
    return Target(name=name, kind="http", address=base_url, api_key=api_key, model=model, question=QUESTION)


def _gateway(name: str, suite: Suite, model: str, retrieval: bool, tenant: str = TENANT) -> Target:
    return Target(
        name=name,
        kind="gateway",
        address=suite.gateway_address,
        api_key=suite.api_keys[tenant],
        model=model,
        question=QUESTION,
        retrieval=retrieval,
    )


def _relay(name: str, address: str, model: str) -> Target:
    return Target(name=name, kind="gateway", address=address, api_key="none", model=model, question=QUESTION)


def scenarios(
    upstream_url: str,
    upstream: ProcessGroup,
    suite: Suite | None,
    proxies: list[LiteLLM],
    relays: list[Child],
) -> list[Scenario]:
    direct_v1 = upstream_url + "/v1"
    found = [
        Scenario(
            "a",
            "upstream directly",
            _http("a", direct_v1, "none", UPSTREAM_MODEL),
            _http("a", direct_v1, "none", f"{UPSTREAM_MODEL};{STREAMING_FAULT}"),
            upstream,
        )
    ]
    for key, label, retrieval, tenant in PARAPET_SCENARIOS:
        if suite is not None and key in TARGETS:
            instant = _gateway(key, suite, INSTANT_MODEL, retrieval, tenant)
            streaming = _gateway(key, suite, STREAMING_MODEL, retrieval, tenant)
            found.append(Scenario(key, label, instant, streaming, suite.services))
    for index, proxy in enumerate(proxies, start=1):
        key = f"d{index}"
        found.append(
            Scenario(
                key,
                f"LiteLLM, {proxy.workers} worker{'s' if proxy.workers > 1 else ''}",
                _http(key, proxy.base_url, proxy.master_key, "bench-instant"),
                _http(key, proxy.base_url, proxy.master_key, "bench-streaming"),
                proxy.processes,
            )
        )
    streaming_model = f"{UPSTREAM_MODEL};{STREAMING_FAULT}"
    labels = ("bare gRPC relay (the floor)", "two bare gRPC relays in a row")
    for depth, (relay, label) in enumerate(zip(relays, labels, strict=False), start=1):
        key = "e" if depth == 1 else f"e{depth}"
        pids = [child.pid for child in relays[:depth]]
        found.append(
            Scenario(
                key,
                label,
                _relay(key, relay.announcement["address"], UPSTREAM_MODEL),
                _relay(key, relay.announcement["address"], streaming_model),
                ProcessGroup(key, functools.partial(tuple, pids)),
            )
        )
    return found


def _load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def measure(workdir: Path) -> Measured:
    ensure_venv()
    load_before = _load_average()
    log = workdir / "bench.log"
    async with contextlib.AsyncExitStack() as stack:
        upstream = await stack.enter_async_context(announced_child(PYTHON, "-m", "parapet.upstream", log=log))
        upstream_url = str(upstream.announcement["base_url"])
        suite = (
            await stack.enter_async_context(parapet_suite(upstream_url, workdir))
            if TARGETS & {"b", "b2", "c"}
            else None
        )
        proxies = [
            await stack.enter_async_context(
                litellm_proxy(upstream_url, free_port(), workers, workdir / f"litellm-{workers}.log")
            )
            for workers in (LITELLM_WORKERS if "d" in TARGETS else [])
        ]
        relays: list[Child] = []
        if "e" in TARGETS:
            relay = PYTHON, "-m", "bench.grpc_relay"
            inner = await stack.enter_async_context(
                announced_child(*relay, "--upstream", upstream_url + "/v1", log=log)
            )
            outer = await stack.enter_async_context(
                announced_child(*relay, "--inner", str(inner.announcement["address"]), log=log)
            )
            relays = [inner, outer]
        found = scenarios(
            upstream_url, ProcessGroup("upstream", lambda: tree(upstream.pid)), suite, proxies, relays
        )
        for scenario in found:
            await wait_settled(scenario.processes)
        idle_rss = {s.key: s.processes.rss() for s in found}
        print("unloaded regime", flush=True)
        unloaded = await one_at_a_time(found, False, CALLS, WARMUP, log)
        print("one at a time, streaming upstream", flush=True)
        baselines = await one_at_a_time(found, True, BASELINE_CALLS, 5, log)
        loads = {s.key: TargetLoad(s.key, baselines[s.key]) for s in found}
        infrastructure = suite.infrastructure if suite else ProcessGroup("none", list)
        infrastructure_peak = infrastructure.rss()
        active = list(found)
        for rate in RATES:
            for scenario in list(active):
                run, _ = await open_loop(scenario, rate, SECONDS, log)
                load = loads[scenario.key]
                load.runs.append(run)
                print(
                    f"({scenario.key}) {rate:g}/s: p99 {run.stats.total.p99 if run.stats.total else '-'} ms, "
                    f"errors {run.stats.error_count}, held {load.is_held(run)}",
                    flush=True,
                )
                infrastructure_peak = max(infrastructure_peak, infrastructure.rss())
                # The direct call is every other target's reference: it runs at every rate.
                if not load.is_held(run) and scenario.key != "a":
                    active.remove(scenario)
    return Measured(
        scenarios=found,
        unloaded=unloaded,
        loads=loads,
        idle_rss=idle_rss,
        infrastructure_rss=infrastructure_peak,
        rates=RATES,
        seconds=SECONDS,
        calls=CALLS,
        machine_load=f"{load_before} / {_load_average()}",
    )


async def main() -> None:
    # Kept when the run fails: the logs of every process are there.
    workdir = Path(tempfile.mkdtemp(prefix="parapet-bench-gateway-"))
    print(f"logs under {workdir}", flush=True)
    measured = await measure(workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    text = body(measured, METHOD)
    write_section(
        "gateway", "Gateway: Parapet's governed chat against the upstream and LiteLLM", COMMAND, text
    )
    print(text)
