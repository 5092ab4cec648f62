"""The server factory every service and every test uses, and the ``serve`` entry point.

``create_server`` opens the service's resources (database and migrations, NATS and streams), builds a
grpc.aio server with the interceptors, health and reflection, lets the service register its servicers
and binds; ``serve`` adds settings from the environment, logging, tracing and signal handling.
Shutdown order matters: health NOT_SERVING first (load balancers stop sending), a short delay while channels
that balance over this replica move their new calls elsewhere, then ``server.stop(grace)`` (new calls
refused, in-flight calls and streams finish within the grace), then the
service's cleanups, then the bus and the database, which in-flight calls may still have needed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable
from contextlib import AsyncExitStack
from typing import Any, Generic, TypeVar

import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from parapet.kit import loop as event_loop
from parapet.kit import telemetry
from parapet.kit.app import Resources, ServiceApp
from parapet.kit.bus import Bus
from parapet.kit.clients import server_keepalive_options
from parapet.kit.config import SettingsT, load_settings
from parapet.kit.database import Database
from parapet.kit.health import HealthMonitor
from parapet.kit.identity import KeySource, NoKeys, TokenVerifier, auth_jwks_source, jwks_file_source
from parapet.kit.interceptors import kit_interceptors
from parapet.kit.logging import configure_logging
from parapet.kit.metrics import MetricsServer
from parapet.kit.migrations import migrate
from parapet.kit.timeouts import cancel_and_wait

log = logging.getLogger(__name__)
T = TypeVar("T")


class KitServer(Generic[SettingsT]):
    """A built, bound server with its resources; ``start`` serves, ``stop`` drains and closes."""

    def __init__(
        self,
        app: ServiceApp[SettingsT],
        server: grpc.aio.Server,
        resources: Resources[SettingsT],
        owned: AsyncExitStack,
        metrics_port: int | None = None,
        health_server: grpc.aio.Server | None = None,
        health_port: int | None = None,
    ) -> None:
        self.app = app
        self.server = server
        self.resources = resources
        self._owned = owned  # the kit's own resources (bus, database), closed last
        self._stopped = False
        self.metrics_port = metrics_port  # bound port of the Prometheus endpoint; None when disabled
        self._health_server = health_server
        self.health_port = health_port  # bound plaintext health-only port; None when disabled

    @property
    def health(self) -> HealthMonitor:
        return self.resources.health

    async def start(self) -> None:
        # Health first: the first calls accepted already see the probed status, never a default.
        await self.health.start()
        if self._health_server is not None:
            await self._health_server.start()
        await self.server.start()

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop: NOT_SERVING, refuse new calls, let in-flight ones finish within ``grace``."""
        if self._stopped:
            return
        self._stopped = True
        settings = self.resources.settings
        grace = settings.shutdown_grace_seconds if grace is None else grace
        try:
            watched = self.health.servicer.balancers > 0
            await self.health.drain()
            if watched:
                # A call that reaches grpc's server as it stops, before the handler took it, is cancelled
                # (the caller sees CANCELLED, not retryable): so new calls must stop coming first.
                await asyncio.sleep(settings.shutdown_delay_seconds)
            self.health.servicer.release()
            await self.server.stop(grace)
        finally:
            if self._health_server is not None:
                # Last of the servers: probes see NOT_SERVING for the whole drain.
                await self._health_server.stop(0)
            # Whatever happened while draining, the service's own resources and then the kit's are closed.
            try:
                await self.resources.cleanup.aclose()
            finally:
                await self._owned.aclose()

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


def _key_source(app: ServiceApp[SettingsT], settings: SettingsT) -> KeySource:
    if app.key_source is not None:
        return app.key_source(settings)
    if settings.identity_jwks_file is not None:
        return jwks_file_source(settings.identity_jwks_file)
    if settings.auth_address is not None:
        return auth_jwks_source(settings.auth_address, settings)
    log.warning("no identity keys configured: every non-public RPC will be refused")
    return NoKeys()


async def _open_resources(
    app: ServiceApp[SettingsT], settings: SettingsT, stack: AsyncExitStack
) -> Resources[SettingsT]:
    database: Database | None = None
    bus: Bus | None = None
    if app.uses_database:
        if not settings.database_url:
            raise ValueError(f"{app.name} needs PARAPET_DATABASE_URL")
        if app.migrations is not None:
            await migrate(settings.database_url, app.name, app.migrations)
        database = Database(
            settings.database_url,
            app.name,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
        )
        stack.push_async_callback(database.close)
    if app.uses_nats:
        if not settings.nats_url:
            raise ValueError(f"{app.name} needs PARAPET_NATS_URL")
        bus = await Bus.start(
            settings.nats_url,
            app.streams,
            wait_seconds=settings.nats_start_wait_seconds,
            name=app.name,
            reconnect_wait=settings.nats_reconnect_wait_seconds,
        )
        stack.push_async_callback(bus.close)
    health = HealthMonitor(
        app.service_names,
        interval=settings.health_interval_seconds,
        timeout=settings.health_probe_timeout_seconds,
    )
    if database is not None:
        health.add_probe("database", database.ping)
    if bus is not None:
        # Calls do without NATS: events go to an outbox first and consumers pause (parapet.kit.health).
        health.add_probe("nats", bus.is_healthy, required=False)
    verifier = TokenVerifier(
        _key_source(app, settings),
        audience=settings.identity_audience,
        issuer=settings.identity_issuer,
        leeway_seconds=settings.identity_leeway_seconds,
        require_permissions=settings.identity_require_permissions,
    )
    return Resources(settings=settings, database=database, bus=bus, identity=verifier, health=health)


async def create_server(
    app: ServiceApp[SettingsT], settings: SettingsT, *, tracer_provider: Any = None
) -> tuple[KitServer[SettingsT], int]:
    """Build and bind the service; returns the server (not started) and the bound port."""
    owned = AsyncExitStack()
    resources: Resources[SettingsT] | None = None
    try:
        resources = await _open_resources(app, settings, owned)
        resources.tracer_provider = tracer_provider or telemetry.current_provider()
        server = grpc.aio.server(
            interceptors=kit_interceptors(
                resources.identity,
                app.public_methods,
                tracer_provider or telemetry.current_provider(),
                nul_checked_by_servicer=app.nul_checked_by_servicer,
                open_enum_methods=app.open_enum_methods,
            ),
            options=[
                ("grpc.so_reuseport", 0),  # a port collision must fail, not share the port
                # Above the identity token limit (8 KiB), so an oversized token gets its own clear
                # TOKEN_TOO_LARGE rather than the transport's anonymous RESOURCE_EXHAUSTED.
                ("grpc.max_metadata_size", 16 * 1024),
                # Close each client connection after a few minutes so clients re-resolve and spread onto
                # replicas added since they connected. No age grace: the GOAWAY only stops new calls on
                # the connection, while streams in flight (a long answer, a job watch) run to their end.
                ("grpc.max_connection_age_ms", 5 * 60 * 1000),
                # Accept the keepalive pings of the kit's channels, idle or not, and ping clients alike, so a
                # stream to a client that vanished ends (parapet.kit.clients).
                *server_keepalive_options(settings),
            ],
        )
        health_pb2_grpc.add_HealthServicer_to_server(resources.health.servicer, server)
        await app.register(server, resources)
        reflection.enable_server_reflection(
            (
                *app.service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        address = f"{settings.host}:{settings.port}"
        credentials = settings.server_credentials()
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
        health_server, health_port = None, None
        if settings.health_port is not None:
            health_server, health_port = _health_only_server(
                resources.health, settings.host, settings.health_port
            )
        metrics_port = None
        if settings.metrics_port is not None:
            metrics_server = MetricsServer()
            metrics_port = await metrics_server.start(settings.host, settings.metrics_port)
            owned.push_async_callback(metrics_server.stop)  # scrapes answer until the very end
    except BaseException:
        try:
            if resources is not None:
                await resources.cleanup.aclose()  # whatever register() set up before failing
        finally:
            await owned.aclose()
        raise
    return KitServer(app, server, resources, owned, metrics_port, health_server, health_port), int(port)


def _health_only_server(health: HealthMonitor, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """A plaintext server with ``grpc.health.v1.Health`` (the same monitor) and nothing else.

    For kubelet probes when the main port requires mutual TLS: they present no certificate. It serves no
    data and no other method (UNIMPLEMENTED), so plaintext exposes only the SERVING bit.
    """
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    log.info("health port listening", extra={"host": host, "port": bound})
    return server, int(bound)


def announce(app: ServiceApp[Any], host: str, port: int) -> None:
    """One JSON line on stdout so a supervisor (``parapet up``) learns a port-0 binding."""
    sys.stdout.write(json.dumps({"event": "serving", "service": app.name, "host": host, "port": port}) + "\n")
    sys.stdout.flush()


async def serve(app: ServiceApp[Any]) -> None:
    """Run ``app`` until SIGTERM or SIGINT, then shut down gracefully. What ``parapet serve`` calls."""
    settings = load_settings(app.settings_type)
    service_name = settings.service_name or app.name
    configure_logging(settings.log_level, settings.log_format, service=service_name)
    provider = telemetry.setup_tracing(service_name, settings.otlp_endpoint)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    built = await _unless_stopped(create_server(app, settings, tracer_provider=provider), stop_requested)
    if built is None:
        # Asked to stop while still starting (e.g. a dependency unreachable and a rollout gave up).
        if provider is not None:
            provider.shutdown()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        log.info("stopped before serving")
        return
    server, port = built
    try:
        await server.start()
        log.info("serving", extra={"host": settings.host, "port": port, "services": list(app.service_names)})
        announce(app, settings.host, port)
        await stop_requested.wait()
        log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace_seconds})
    finally:
        await _bounded_stop(
            server,
            settings.shutdown_delay_seconds
            + settings.shutdown_grace_seconds
            + settings.shutdown_cleanup_seconds,
        )
        if provider is not None:
            provider.shutdown()  # flush spans still buffered for export
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")


async def _bounded_stop(server: KitServer[Any], bound: float) -> None:
    """``server.stop()``, given at most ``bound`` seconds: a shutdown must end the process even when closing
    a resource waits on something that will never answer (seen once: a gateway whose NATS server died at the
    same moment never finished closing). What was still running is logged with its stack, then abandoned."""
    stopping = asyncio.ensure_future(server.stop())
    done, _ = await asyncio.wait({stopping}, timeout=bound)
    if done:
        stopping.result()  # a failure to stop is the caller's to see
        return
    stuck = [
        {"task": task.get_name(), "awaiting": _awaiting(task)}
        for task in asyncio.all_tasks()
        if task is not asyncio.current_task()
    ]
    log.error(
        "shutdown did not finish in time; exiting without it", extra={"bound_seconds": bound, "tasks": stuck}
    )
    stopping.cancel()


def _awaiting(task: asyncio.Task[Any]) -> str:
    """Where ``task`` waits: its coroutine and each one it awaits in turn, outermost first (a task's own
    stack shows only the outermost frame)."""
    places: list[str] = []
    current: Any = task.get_coro()
    while current is not None and len(places) < 32:
        frame = getattr(current, "cr_frame", None) or getattr(current, "ag_frame", None)
        frame = frame or getattr(current, "gi_frame", None)
        if frame is not None:
            places.append(f"{frame.f_code.co_qualname} ({frame.f_code.co_filename}:{frame.f_lineno})")
        current = getattr(current, "cr_await", None) or getattr(current, "ag_await", None)
    return " -> ".join(places)


async def _unless_stopped(starting: Awaitable[T], stop_requested: asyncio.Event) -> T | None:
    """``starting``'s result, or None when a stop is requested first (``starting`` is then cancelled).

    Start-up can wait on dependencies (connecting to NATS, migrating the database); a SIGTERM meanwhile
    must end the process, not be remembered until start-up finishes.
    """
    task = asyncio.ensure_future(starting)
    stop = asyncio.ensure_future(stop_requested.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if task.done():
        return task.result()
    await cancel_and_wait(task)
    return None


def main(app: ServiceApp[Any]) -> None:
    """Synchronous entry point: ``python -m services.<name>`` can be ``main(APP)`` (on uvloop when installed)."""
    event_loop.run(serve(app))
