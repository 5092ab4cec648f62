"""Shared set-up of the metering and billing benchmarks: a PostgreSQL and a NATS of their own, services in
child processes pinned to one CPU, and a JWKS / policy file. Not a benchmark itself (no ``main``)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from bench.children import pin
from parapet.auth.v1 import tenant_policy_pb2
from parapet.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from parapet.kit import timeouts
from parapet.kit.testing import TestKeys

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = "from parapet.kit.server import main\nfrom services.{name}.app import APP\nmain(APP)\n"


@dataclass(frozen=True)
class Infra:
    database_url: str
    nats_url: str
    directory: Path


@contextmanager
def infrastructure(directory: Path) -> Iterator[Infra]:
    """PostgreSQL with its default (durable) settings and NATS with file storage, as in production."""
    postgres = EmbeddedPostgres(directory / "pg", free_port())
    nats = EmbeddedNats(directory / "nats", free_port())
    postgres.start()
    nats.start()
    try:
        yield Infra(postgres.url, nats.url, directory)
    finally:
        nats.stop()
        postgres.stop()


def write_files(
    directory: Path, keys: TestKeys, policies: dict[str, tenant_policy_pb2.TenantPolicy]
) -> dict[str, str]:
    jwks = directory / "jwks.json"
    jwks.write_text(json.dumps(keys.jwks()))
    policy = directory / "policies.json"
    policy.write_text(json.dumps({t: json_format.MessageToDict(p) for t, p in policies.items()}))
    return {"PARAPET_IDENTITY_JWKS_FILE": str(jwks), "PARAPET_POLICY_FILE": str(policy)}


@asynccontextmanager
async def service_process(
    name: str, infra: Infra, env: dict[str, str], cpu: int
) -> AsyncIterator[tuple[int, int]]:
    """Run ``services.<name>`` through the kit's ``main`` in a child process pinned to ``cpu``; yield its
    (port, pid)."""
    script = infra.directory / f"{name}_main.py"
    script.write_text(PROGRAM.format(name=name))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=str(ROOT),
        env={
            **os.environ,
            "PARAPET_PORT": "0",
            "PARAPET_DATABASE_URL": infra.database_url,
            "PARAPET_NATS_URL": infra.nats_url,
            "PARAPET_LOG_LEVEL": "WARNING",
            **env,
        },
        preexec_fn=lambda: pin(cpu),
    )
    try:
        assert proc.stdout is not None
        announcement = json.loads(await timeouts.within(120, proc.stdout.readline()))
        yield int(announcement["port"]), proc.pid
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
