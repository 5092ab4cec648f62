"""What a service is, to the kit: a :class:`ServiceApp`, and the :class:`Resources` the kit opens for it.

A service exports ``APP = ServiceApp(...)`` from ``services/<name>/app.py``; the kit does the rest
(see ``docs/architecture.md``, whose contract this module implements).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic

import grpc.aio

from parapet.kit.bus import Bus, StreamSpec
from parapet.kit.config import SettingsT
from parapet.kit.database import Database
from parapet.kit.health import HealthMonitor, Probe
from parapet.kit.identity import KeySource, TokenVerifier
from parapet.kit.timeouts import cancel_and_wait

log = logging.getLogger(__name__)


@dataclass
class Resources(Generic[SettingsT]):
    """Everything the kit opened for a service, handed to its ``register`` function.

    ``cleanup`` is closed on shutdown after the server has drained, in reverse order of registration,
    before the kit closes the bus and the database: a service pushes its own cleanups onto it.
    """

    settings: SettingsT
    database: Database | None
    bus: Bus | None
    identity: TokenVerifier
    health: HealthMonitor
    cleanup: AsyncExitStack = field(default_factory=AsyncExitStack)
    # The tracer provider the server records its spans with: a service's own spans (a model call) use it, so
    # they land in the same trace and exporter as the RPC's span.
    tracer_provider: Any = None

    def require_database(self) -> Database:
        if self.database is None:
            raise RuntimeError("this service did not declare uses_database=True")
        return self.database

    def require_bus(self) -> Bus:
        if self.bus is None:
            raise RuntimeError("this service did not declare uses_nats=True")
        return self.bus

    def add_health_check(self, name: str, probe: Probe) -> None:
        """Another dependency health depends on (e.g. an upstream the service cannot work without)."""
        self.health.add_probe(name, probe)

    def spawn(self, coroutine: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        """Run a background task (an outbox relay, a consumer) that is cancelled and awaited on shutdown.

        A task that dies with an exception is logged: a silently dead relay would lose no data but would
        stop delivering, which must be visible.
        """
        task = asyncio.create_task(coroutine, name=name)

        def report(done: asyncio.Task[None]) -> None:
            if not done.cancelled() and done.exception() is not None:
                log.error("background task %s died", name, exc_info=done.exception(), extra={"task": name})

        task.add_done_callback(report)

        async def stop() -> None:
            await cancel_and_wait(task)

        self.cleanup.push_async_callback(stop)
        return task


Register = Callable[[grpc.aio.Server, Resources[SettingsT]], Awaitable[None]]


@dataclass(frozen=True)
class ServiceApp(Generic[SettingsT]):
    """A service's definition. See ``docs/architecture.md`` for an example."""

    name: str  # also its PostgreSQL schema and its Alembic version table's schema
    settings_type: type[SettingsT]  # subclass of parapet.kit.config.ServiceSettings
    register: Register[SettingsT]  # async (server, resources) -> None: add servicers
    service_names: tuple[str, ...]  # full proto service names, for health and reflection
    uses_database: bool = False  # the kit opens the engine, runs migrations, probes it for health
    uses_nats: bool = False  # the kit connects, declares streams, probes it for health
    migrations: Path | None = None  # Alembic folder, applied at start when uses_database
    public_methods: frozenset[str] = frozenset()  # "/pkg.Service/Method" callable without a token
    # Methods whose servicer refuses text holding U+0000 itself, item by item (retrieval's ingestion: one bad
    # document is rejected on its own); the kit refuses it for every other method (parapet.kit.inbound).
    nul_checked_by_servicer: frozenset[str] = frozenset()
    # Methods that keep enum numbers their enum does not declare, as they came: records of facts written by
    # newer releases of other services. Every other method refuses them (parapet.kit.inbound).
    open_enum_methods: frozenset[str] = frozenset()
    streams: tuple[StreamSpec, ...] = ()  # JetStream streams declared at start (needs uses_nats)
    # Where identity keys come from when not from settings.identity_jwks_file (e.g. the auth service
    # verifying with its own keys, or other services fetching auth's JWKS RPC).
    key_source: Callable[[SettingsT], KeySource] | None = None

    def __post_init__(self) -> None:
        if self.streams and not self.uses_nats:
            raise ValueError(f"{self.name}: streams need uses_nats=True")
        if self.migrations is not None and not self.uses_database:
            raise ValueError(f"{self.name}: migrations need uses_database=True")
        for method in self.public_methods:
            if not method.startswith("/") or method.count("/") != 2:
                raise ValueError(
                    f"{self.name}: public method {method!r} must look like '/pkg.Service/Method'"
                )
