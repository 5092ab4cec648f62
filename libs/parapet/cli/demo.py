"""The demo tenant ``parapet up`` offers, so a newcomer's first ``parapet chat`` answers from real documents.

Ensured on every start, idempotently, with the platform operator's key: tenant ``demo``, its service
account ``demo`` (role ``admin``: chat, ingest, usage, audit, keys, policy of that tenant only), an API key
for it in ``<home>/identity/demo.key`` (0600; created once, and again only when the stored one no longer
authenticates), and the sample documents of ``samples/demo/`` ingested with that key. Re-ingesting
unchanged samples re-embeds nothing (retrieval compares content hashes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

from parapet import clients
from parapet.auth.v1 import api_key_pb2, auth_service_pb2, tenant_pb2
from parapet.auth.v1 import tenant_admin_service_pb2 as pb
from parapet.cli import connect, documents, ingest, keys
from parapet.cli.failures import CliError, describe
from parapet.cli.layout import HomeLayout, PortLayout
from parapet.embedded.private_file import write_private

DEMO_TENANT = "demo"
DEMO_USER = "demo"
DEMO_ROLE = "admin"
SAMPLE_QUESTION = "How many vacation days do employees get?"
# A stored key that fails with one of these is gone for good; any other failure is not the key's fault.
_KEY_GONE = {"API_KEY_INVALID", "API_KEY_REVOKED", "API_KEY_EXPIRED"}


def samples_dir() -> Path | None:
    """``samples/demo`` of the source tree, else of the working directory (an installed package has none)."""
    for root in (Path(__file__).resolve().parents[3], Path.cwd()):
        candidate = root / "samples" / "demo"
        if candidate.is_dir():
            return candidate
    return None


@dataclass(frozen=True)
class DemoReady:
    key_file: Path
    key_created: bool
    report: ingest.Report | None  # None: no samples folder found

    def describe(self) -> str:
        key = "created" if self.key_created else "kept"
        docs = "no samples/demo folder found" if self.report is None else self.report.summary()
        return (
            f"demo tenant {DEMO_TENANT!r} ready: key {self.key_file} ({key}); sample documents: {docs}\n"
            f'  try: .venv/bin/parapet chat "{SAMPLE_QUESTION}"'
        )


async def _key_still_works(session: connect.Session, key: str) -> bool:
    auth = session.client(clients.auth, "auth").stub
    try:
        await auth.Authenticate(auth_service_pb2.AuthenticateRequest(api_key=key))
    except grpc.aio.AioRpcError as exc:
        from parapet.kit.errors import error_details

        if error_details(exc).reason in _KEY_GONE:
            return False
        raise
    return True


async def _ensure_tenant(session: connect.Session) -> None:
    admin = session.client(clients.tenant_admin, "auth").stub
    metadata = await session.token_metadata()
    try:
        await admin.CreateTenant(
            pb.CreateTenantRequest(tenant=tenant_pb2.Tenant(tenant_id=DEMO_TENANT, display_name="Demo")),
            metadata=metadata,
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
    await keys.ensure_user(admin, metadata, DEMO_TENANT, DEMO_USER, [DEMO_ROLE])


async def _ensure_key(session: connect.Session, key_file: Path) -> tuple[str, bool]:
    existing = connect.read_key(key_file)
    if existing is not None and await _key_still_works(session, existing):
        return existing, False
    admin = session.client(clients.tenant_admin, "auth").stub
    reply = await admin.CreateApiKey(
        pb.CreateApiKeyRequest(
            tenant_id=DEMO_TENANT,
            api_key=api_key_pb2.ApiKey(user_id=DEMO_USER, display_name="demo key of parapet up"),
        ),
        metadata=await session.token_metadata(),
    )
    write_private(key_file, reply.secret + "\n")
    return reply.secret, True


async def _ingest_samples(demo: connect.Session, folder: Path) -> ingest.Report:
    report = ingest.Report()
    vetted = ingest.vet_all(list(documents.find([folder])), report)
    stub = demo.client(clients.retrieval, "retrieval", streaming=True).stub
    requests = ingest.document_requests(
        vetted, on_problem=lambda c, why: report.problems.append((documents.shown(c.path), why))
    )
    await ingest.send(stub, await demo.token_metadata(), requests, listener=report.record)
    return report


async def ensure_demo(home: HomeLayout, ports: PortLayout, env: Mapping[str, str] | None = None) -> DemoReady:
    """Make the demo tenant, key and documents exist; raises grpc/CLI errors for the caller to report."""
    env = dict(os.environ) if env is None else env
    operator_file = home.operator_key_file
    operator_key = connect.read_key(operator_file)
    if operator_key is None:
        raise CliError(f"no operator key at {operator_file} (auth writes it at its first start)")
    key_file = home.demo_key_file
    operator = connect.Credential(operator_key, str(operator_file))
    async with connect.Session(operator, ports=ports, env=env) as session:
        await _ensure_tenant(session)
        key, created = await _ensure_key(session, key_file)
    folder = samples_dir()
    report = None
    if folder is not None:
        async with connect.Session(connect.Credential(key, str(key_file)), ports=ports, env=env) as demo:
            report = await _ingest_samples(demo, folder)
    return DemoReady(key_file, created, report)


# What `parapet up` needs running for the demo: auth (tenant, key), retrieval (samples); chat needs the rest.
NEEDED = ("auth", "retrieval")


class BackgroundDemo:
    """:func:`ensure_demo` in a thread beside the supervisor (ingesting takes seconds; restarts must not wait
    for it), stopped before the services are: a suite stopping mid-setup cancels it instead of leaving
    calls in flight while the interpreter exits."""

    def __init__(
        self, home: HomeLayout, ports: PortLayout, env: Mapping[str, str], say: Callable[[str, bool], None]
    ) -> None:
        self._args = (home, ports, env)
        self._say = say
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[DemoReady] | None = None
        self._thread = threading.Thread(target=self._work, name="parapet-demo", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _work(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        try:
            ready = await ensure_demo(*self._args)
        except asyncio.CancelledError:
            return
        except CliError as exc:
            self._say(f"parapet up: demo tenant not set up: {exc}", True)
        except grpc.aio.AioRpcError as exc:
            self._say(f"parapet up: demo tenant not set up: {describe(exc)}", True)
        else:
            self._say(ready.describe(), False)

    def stop(self, timeout: float = 5.0) -> None:
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not task.done():
            # The loop may close between the check and the call; then there is nothing left to cancel.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)
        if self._thread.is_alive():
            self._thread.join(timeout)
