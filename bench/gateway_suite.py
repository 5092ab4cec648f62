"""Parapet's whole suite for the gateway benchmark: ``parapet up`` (every service its own process, embedded
PostgreSQL and NATS) on a free base port and a home of its own, then a tenant set up through the public admin
API the way an operator would: its policy, a user, an API key, and a few documents for the retrieval scenario."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from parapet.auth.v1.tenant_admin_service_pb2_grpc import TenantAdminServiceAsyncStub

from bench.gateway_procs import PYTHON, ProcessGroup, command_line, spawn, stop, tree
from parapet import clients
from parapet.auth.v1 import (
    auth_service_pb2,
    permission_pb2,
    tenant_admin_service_pb2,
    tenant_pb2,
    tenant_policy_pb2,
    user_pb2,
)
from parapet.auth.v1.api_key_pb2 import ApiKey
from parapet.cli import registry
from parapet.cli.health import SERVING, HealthProber
from parapet.cli.layout import HomeLayout, PortLayout
from parapet.embedded import free_port
from parapet.moderation.v1 import category_pb2
from parapet.retrieval.v1 import document_pb2, retrieval_service_pb2
from parapet.usage.v1 import money_pb2

TENANT = "bench"
# The same policy, but person names allowed in prompts: moderation then skips its NER model, the costliest
# detector (docs/moderation.md), so the pair shows what that model costs per request.
NAMES_TENANT = "bench-names"
USER = "loadgen"
GROUP = "staff"
# Inference's model names; the emulator reads the delays from the upstream model name.
INSTANT_MODEL = "bench-instant"
STREAMING_MODEL = "bench-streaming"
UPSTREAM_MODEL = "gpt-4o-mini"
STREAMING_FAULT = "first_token_delay=0.05;chunk_delay=0.01"
STARTUP_TIMEOUT = 180.0

DOCUMENTS = {
    "handbook-leave": (
        "Employee handbook: leave",
        "New employees receive twenty vacation days in their first year. Vacation days accrue monthly and up "
        "to five unused days carry over into the next year. Requests go to the team lead two weeks ahead.",
    ),
    "handbook-equipment": (
        "Employee handbook: equipment",
        "Every new employee receives a laptop and a headset on the first day. Hardware is replaced every three "
        "years; lost equipment is reported to the IT desk within one day.",
    ),
    "handbook-travel": (
        "Employee handbook: travel",
        "Business travel is booked through the travel desk. Economy class applies to flights under six hours; "
        "receipts are submitted within thirty days of the trip.",
    ),
    "support-onboarding": (
        "Support onboarding guide",
        "New support engineers shadow a senior colleague for two weeks, then take first-line tickets. The "
        "onboarding guide lists the tools, the escalation paths and the service level targets.",
    ),
    "support-escalation": (
        "Support escalation policy",
        "Tickets that block a customer's production are escalated to the on-call engineer within fifteen "
        "minutes; everything else follows the normal queue in order of arrival.",
    ),
}


@dataclass(frozen=True)
class Suite:
    gateway_address: str
    api_keys: dict[str, str]  # by tenant
    services: ProcessGroup  # the eight Parapet service processes
    infrastructure: ProcessGroup  # embedded PostgreSQL and NATS
    home: Path


def inference_config(upstream_base_url: str) -> dict[str, object]:
    """Two models on one OpenAI-format provider, the emulator: instant, and 50 ms + 20 chunks over 200 ms."""
    model = {"provider": "upstream", "input_price_per_million": "0.15", "output_price_per_million": "0.60"}
    return {
        "default_model": INSTANT_MODEL,
        "providers": {"upstream": {"kind": "openai", "base_url": upstream_base_url + "/v1"}},
        "models": [
            {**model, "name": INSTANT_MODEL, "upstream_model": UPSTREAM_MODEL},
            {**model, "name": STREAMING_MODEL, "upstream_model": f"{UPSTREAM_MODEL};{STREAMING_FAULT}"},
        ],
    }


def tenant_policy(*, allow_names: bool = False) -> tenant_policy_pb2.TenantPolicy:
    """A customer tenant as product teams would run it: a chat role, both models, a generous monthly cost
    budget per tenant and a daily token budget per key (so every request reserves and settles real budgets)
    and rate limits far above the benchmark's rates; moderation at its defaults unless ``allow_names``."""
    p = permission_pb2
    rules = (
        [
            tenant_policy_pb2.ModerationRule(
                category=category_pb2.CATEGORY_PII_PERSON_NAME, action=category_pb2.ACTION_ALLOW
            )
        ]
        if allow_names
        else []
    )
    return tenant_policy_pb2.TenantPolicy(
        moderation=tenant_policy_pb2.ModerationPolicy(rules=rules),
        roles=[
            tenant_policy_pb2.RoleDefinition(
                role="admin",
                permissions=[
                    p.PERMISSION_CHAT,
                    p.PERMISSION_INGEST,
                    p.PERMISSION_DOCUMENTS_READ,
                    p.PERMISSION_DOCUMENTS_DELETE,
                    p.PERMISSION_USAGE_READ,
                    p.PERMISSION_AUDIT_READ,
                    p.PERMISSION_ADMIN,
                ],
            ),
            tenant_policy_pb2.RoleDefinition(
                role="member",
                permissions=[p.PERMISSION_CHAT, p.PERMISSION_INGEST, p.PERMISSION_DOCUMENTS_READ],
            ),
        ],
        models=tenant_policy_pb2.ModelPolicy(
            allowed_models=[INSTANT_MODEL, STREAMING_MODEL],
            default_model=INSTANT_MODEL,
            max_tokens_per_request=1024,
        ),
        budgets=[
            tenant_policy_pb2.Budget(
                budget_id="tenant-month",
                scope=tenant_policy_pb2.BUDGET_SCOPE_TENANT,
                window=tenant_policy_pb2.BUDGET_WINDOW_MONTH,
                cost_limit=money_pb2.Money(currency_code="USD", amount_micros=1_000_000 * 1_000_000),
                soft_limit_percent=80,
            ),
            tenant_policy_pb2.Budget(
                budget_id="key-day",
                scope=tenant_policy_pb2.BUDGET_SCOPE_API_KEY,
                window=tenant_policy_pb2.BUDGET_WINDOW_DAY,
                token_limit=10_000_000_000,
            ),
        ],
        rate_limits=[
            tenant_policy_pb2.RateLimit(
                scope=tenant_policy_pb2.RATE_LIMIT_SCOPE_TENANT, requests_per_minute=10_000_000
            ),
            tenant_policy_pb2.RateLimit(
                scope=tenant_policy_pb2.RATE_LIMIT_SCOPE_API_KEY, requests_per_minute=10_000_000
            ),
        ],
    )


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def _authenticate(auth_address: str, api_key: str) -> str:
    async with clients.auth(auth_address) as auth:
        reply = await auth.stub.Authenticate(auth_service_pb2.AuthenticateRequest(api_key=api_key))
    return str(reply.token)


async def provision(ports: PortLayout, home: HomeLayout) -> dict[str, str]:
    """The benchmark's tenants through TenantAdminService as the bootstrap operator (``parapet up`` wrote its
    key), then the documents through RetrievalService as the main tenant's user. Returns the API key of
    each tenant's user, by tenant."""
    auth_address = ports.service_address(registry.get("auth"))
    operator_key = home.operator_key_file.read_text().strip()
    operator = _bearer(await _authenticate(auth_address, operator_key))
    keys = {}
    async with clients.tenant_admin(auth_address) as admin:
        keys[TENANT] = await _tenant(admin.stub, operator, TENANT, tenant_policy())
        keys[NAMES_TENANT] = await _tenant(
            admin.stub, operator, NAMES_TENANT, tenant_policy(allow_names=True)
        )
    retrieval = ports.service_address(registry.get("retrieval"))
    await _ingest(retrieval, _bearer(await _authenticate(auth_address, keys[TENANT])))
    return keys


async def _tenant(
    admin: TenantAdminServiceAsyncStub,
    operator: tuple[tuple[str, str]],
    tenant_id: str,
    policy: tenant_policy_pb2.TenantPolicy,
) -> str:
    """A tenant with ``policy``, its user USER and an API key for that user, whose secret is returned."""
    a = tenant_admin_service_pb2
    tenant = tenant_pb2.Tenant(tenant_id=tenant_id, display_name=f"Benchmark {tenant_id}")
    await admin.CreateTenant(a.CreateTenantRequest(tenant=tenant), metadata=operator)
    current = await admin.GetTenantPolicy(a.GetTenantPolicyRequest(tenant_id=tenant_id), metadata=operator)
    await admin.UpdateTenantPolicy(
        a.UpdateTenantPolicyRequest(
            tenant_id=tenant_id, policy=policy, expected_version=current.policy.version
        ),
        metadata=operator,
    )
    user = user_pb2.User(user_id=USER, roles=["member"], groups=[GROUP])
    await admin.CreateUser(a.CreateUserRequest(tenant_id=tenant_id, user=user), metadata=operator)
    # Retrieval checks permission names among the token's scopes and roles (it has no policy to map
    # roles): the key names the three it uses.
    key = ApiKey(user_id=USER, display_name="load generator", scopes=["chat", "ingest", "documents.read"])
    created = await admin.CreateApiKey(
        a.CreateApiKeyRequest(tenant_id=tenant_id, api_key=key), metadata=operator
    )
    return str(created.secret)


async def _ingest(address: str, caller: tuple[tuple[str, str]]) -> None:
    def requests() -> list[retrieval_service_pb2.IngestDocumentsRequest]:
        return [
            retrieval_service_pb2.IngestDocumentsRequest(
                document=document_pb2.Document(
                    document_id=document_id, title=title, mime_type="text/plain", access_groups=[GROUP]
                ),
                content=text.encode(),
            )
            for document_id, (title, text) in DOCUMENTS.items()
        ]

    async with clients.retrieval(address) as retrieval:
        await retrieval.stub.IngestDocuments(iter(requests()), metadata=caller, timeout=120)


def _is_service(pid: int) -> bool:
    return " parapet.cli serve " in command_line(pid)


def service_name(pid: int) -> str:
    """``gateway`` for the process ``... -m parapet.cli serve gateway``."""
    return command_line(pid).split(" serve ", 1)[-1].split()[0]


def _is_infrastructure(pid: int) -> bool:
    line = command_line(pid)
    return "postgres" in line or "nats-server" in line


async def _wait_serving(ports: PortLayout, process: asyncio.subprocess.Process, log: Path) -> None:
    pending = {spec.name: ports.service_address(spec) for spec in registry.SERVICES}
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with HealthProber() as prober:
        while pending:
            if process.returncode is not None:
                raise RuntimeError(f"parapet up exited with {process.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not SERVING within {STARTUP_TIMEOUT:g} s: {sorted(pending)}; see {log}")
            for name, address in list(pending.items()):
                if await asyncio.to_thread(prober.status, address, timeout=1.0) == SERVING:
                    del pending[name]
            await asyncio.sleep(0.5)


async def _has_option(option: str) -> bool:
    process = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "parapet.cli", "up", "--help", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    return option in out.decode()


def _free_base_port() -> int:
    """A base port with the suite's whole range (services, metrics, PostgreSQL, NATS) free now."""
    for _ in range(100):
        base = free_port()
        if base + 40 < 65535 and all(_bindable(base + offset) for offset in range(40)):
            return base
    raise RuntimeError("no free range of ports")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@asynccontextmanager
async def parapet_suite(upstream_base_url: str, workdir: Path) -> AsyncIterator[Suite]:
    """``parapet up`` with its own home under ``workdir`` and the emulator as the only provider; provisioned."""
    home = HomeLayout(workdir / "parapet-home")
    ports = PortLayout(_free_base_port())
    config = workdir / "inference.json"
    config.write_text(json.dumps(inference_config(upstream_base_url)))
    log = workdir / "parapet-up.log"
    env = {
        **os.environ,
        "PARAPET_INFERENCE_CONFIG_FILE": str(config),
        "PARAPET_LOG_LEVEL": "WARNING",
    }
    argv = [PYTHON, "-m", "parapet.cli", "up", "--home", str(home.root), "--base-port", str(ports.base)]
    argv += ["--startup-timeout", str(STARTUP_TIMEOUT)]
    if await _has_option("--no-demo"):
        argv.append("--no-demo")  # the benchmark provisions its own tenant; the demo's ingestion is noise
    process = await spawn(argv, log=log, env=env)
    try:
        await _wait_serving(ports, process, log)
        api_keys = await provision(ports, home)
        yield Suite(
            gateway_address=ports.service_address(registry.get("gateway")),
            api_keys=api_keys,
            services=ProcessGroup(
                "parapet", lambda: [p for p in tree(process.pid) if _is_service(p)], service_name
            ),
            infrastructure=ProcessGroup(
                "postgres+nats", lambda: [p for p in tree(process.pid) if _is_infrastructure(p)]
            ),
            home=home.root,
        )
    finally:
        await stop(process, grace=30.0)
