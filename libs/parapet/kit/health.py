"""Health driven by real dependency state: SERVING only while every dependency the RPCs need answers.

A monitor task probes each dependency (database ``SELECT 1``, NATS round trip, plus any a service adds)
every ``interval`` seconds, each probe bounded by ``timeout``, and sets the overall status (``""``) and
every service name of the ``grpc.health.v1`` servicer: SERVING when every *required* probe passes,
NOT_SERVING as soon as one fails. So a load balancer or kubelet stops sending work within about
``interval + timeout`` of a dependency going away, and resumes as soon as it is back.

A probe added with ``required=False`` is a dependency the service's calls do without: NATS, whose events every
service writes to an outbox first and relays later, and whose consumers only pause (the few calls that need it,
operators' and erasures': metering's ReplayUsageEvents and audit's Erase, answer UNAVAILABLE and succeed on a
retry once NATS is back). Its outage is logged and shown by
:data:`DEPENDENCIES` (SERVING only while every probe passes), but takes no replica out of rotation: with NATS
among the required probes, a NATS outage made every pod of the suite unready, and the gateway refused every
chat that its outbox could have carried.

One more name, :data:`ACCEPTING`, follows only the drain: SERVING from the start until the server begins to
shut down, whatever the dependencies say. The kit's channels to several replicas health-check it
(``clients.service_config``), so
a draining replica gets no new calls from them before it refuses calls. It ignores dependency probes on
purpose: when every replica's database is down, a caller should still reach a replica and get its typed
error, not a channel with no healthy address.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parapet.kit.timeouts import cancel_and_wait, stray_cancellation, within

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[bool]]
"""A dependency check: True when healthy; False, an exception or a timeout count as unhealthy."""

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
ACCEPTING = "parapet.accepting"
"""The health name that is SERVING until the drain starts, and that client-side load balancing watches."""
DEPENDENCIES = "parapet.dependencies"
"""The health name that is SERVING only while every probe passes, those no RPC needs included (NATS)."""


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """``grpc.health.v1.Health`` whose Watch streams end once the server drains.

    Unlike grpc's own servicer, it starts NOT_SERVING (nothing is known before the first probe; only
    :data:`ACCEPTING` starts SERVING), and a Watch stream sends the final NOT_SERVING and then ends: an open
    Watch (grpc-js clients keep one) would otherwise hold a graceful shutdown for its whole grace period. A
    Watch of :data:`ACCEPTING` ends later, when :meth:`release` says the server stops: a client whose health
    stream ends after a reply reopens it at once, without backoff, and during the drain's delay that was a
    thousand Watch calls a second from one channel.
    """

    def __init__(self, service_names: Iterable[str]) -> None:
        self._status = dict.fromkeys(("", *service_names, DEPENDENCIES), NOT_SERVING)
        self._status[ACCEPTING] = SERVING
        self._changed = asyncio.Condition()
        self._draining = False
        self._balancers = 0  # open Watch streams of ACCEPTING: clients that balance over this replica
        self._released = asyncio.Event()  # the server stops: Watch streams of ACCEPTING may end

    @property
    def balancers(self) -> int:
        """How many Watch streams of :data:`ACCEPTING` are open now."""
        return self._balancers

    async def set_all(self, status: int, dependencies: int | None = None) -> None:
        """Every name but :data:`ACCEPTING` (which follows only the drain) and :data:`DEPENDENCIES` to ``status``;
        :data:`DEPENDENCIES` to ``dependencies`` (``status`` when None)."""
        async with self._changed:
            if self._draining:
                return
            for name in self._status:
                if name not in (ACCEPTING, DEPENDENCIES):
                    self._status[name] = status
            self._status[DEPENDENCIES] = status if dependencies is None else dependencies
            self._changed.notify_all()

    async def drain(self) -> None:
        async with self._changed:
            self._draining = True
            for name in self._status:
                self._status[name] = NOT_SERVING
            self._changed.notify_all()

    def release(self) -> None:
        """The server is about to stop: end the Watch streams of :data:`ACCEPTING` (after their NOT_SERVING)."""
        self._released.set()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
        balancer = request.service == ACCEPTING
        self._balancers += balancer
        try:
            await self._watch(request.service, balancer, context)
        finally:
            self._balancers -= balancer

    async def _watch(self, service: str, balancer: bool, context: grpc.aio.ServicerContext) -> None:
        last: int | None = None
        while True:
            status = self._status.get(service, SERVICE_UNKNOWN)
            if status != last:
                # Written outside the lock: a slow watcher must not hold up status changes.
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if self._draining:
                if balancer:
                    await self._released.wait()
                return
            async with self._changed:
                if self._status.get(service, SERVICE_UNKNOWN) == last and not self._draining:
                    await self._changed.wait()


class HealthMonitor:
    """Owns the grpc.health.v1 servicer and the task that keeps it true."""

    def __init__(self, service_names: Iterable[str], *, interval: float = 1.0, timeout: float = 1.0) -> None:
        self.servicer = HealthServicer(service_names)
        self._probes: dict[str, Probe] = {}
        self._optional: set[str] = set()  # probes no RPC needs: they fail DEPENDENCIES, not readiness
        self._interval = interval
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None
        self._serving: bool | None = None
        self._failing: frozenset[str] = frozenset()
        self._draining = False

    def add_probe(self, name: str, probe: Probe, *, required: bool = True) -> None:
        """Register a dependency; ``name`` appears in the logs when it fails. One not ``required`` is one no RPC
        needs: its failure shows in :data:`DEPENDENCIES` and the logs, and the service stays SERVING."""
        if name in self._probes:
            raise ValueError(f"health probe {name!r} already registered")
        self._probes[name] = probe
        if not required:
            self._optional.add(name)

    @property
    def serving(self) -> bool:
        return bool(self._serving)

    async def _run_probe(self, probe: Probe) -> bool:
        try:
            return await within(self._timeout, probe())
        except asyncio.CancelledError as cancelled:
            # The monitor stopping cancels this probe's task (gather's child); a probe that awaited something
            # another task cancelled raises CancelledError too, and that is a failed probe: raised, it ended the
            # monitor's loop and froze health at its last status (SERVING with the database gone).
            if not stray_cancellation(cancelled):
                raise
            return False
        except Exception:
            return False  # a failing probe is the answer itself, not an error of the monitor

    async def check_once(self) -> bool:
        """Probe every dependency now and publish the result; returns whether all are healthy."""
        names = list(self._probes)
        results = await asyncio.gather(*(self._run_probe(self._probes[name]) for name in names))
        failing = frozenset(name for name, ok in zip(names, results, strict=True) if not ok)
        serving = not failing - self._optional
        await self._publish(serving, failing)
        return serving

    async def _publish(self, serving: bool, failing: frozenset[str]) -> None:
        if self._draining:
            return  # once draining, NOT_SERVING is final
        if serving == self._serving and failing == self._failing:
            return
        if not serving:
            log.warning("health: NOT_SERVING", extra={"health": "NOT_SERVING", "failing": sorted(failing)})
        elif failing:
            log.warning(
                "health: SERVING without dependencies no call needs",
                extra={"health": "SERVING", "failing": sorted(failing)},
            )
        else:
            log.info("health: SERVING", extra={"health": "SERVING"})
        self._serving, self._failing = serving, failing
        await self.servicer.set_all(
            SERVING if serving else NOT_SERVING, SERVING if not failing else NOT_SERVING
        )

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check_once()

    async def start(self) -> None:
        """Publish an accurate first status before the server takes calls, then keep it current."""
        await self.check_once()
        self._task = asyncio.create_task(self._loop(), name="parapet-health-monitor")

    async def drain(self) -> None:
        """NOT_SERVING for good (graceful shutdown): load balancers stop sending new calls."""
        await self.stop()
        self._draining = True
        self._serving = False
        await self.servicer.drain()

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
