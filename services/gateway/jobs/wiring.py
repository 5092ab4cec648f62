"""What the gateway's ``register`` calls to serve JobService and run job workers: one function."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc.aio

from parapet.gateway.v1 import chat_service_pb2, job_service_pb2_grpc
from parapet.kit import periodic
from parapet.kit.app import Resources
from parapet.kit.bus import Bus
from services.gateway.authorization import Authorizer
from services.gateway.caller import Caller
from services.gateway.flow import ChatFlow
from services.gateway.jobs import queue
from services.gateway.jobs.changes import JobChanges
from services.gateway.jobs.delegation import DelegatedCallers
from services.gateway.jobs.servicer import CallerResolver, JobServicer
from services.gateway.jobs.settings import JobSettings
from services.gateway.jobs.store import JobStore
from services.gateway.jobs.worker import ItemRunner, JobWorker

log = logging.getLogger(__name__)


def flow_runner(flow: ChatFlow) -> ItemRunner:
    """Items run through exactly the flow ``Chat`` runs: their own usage event and audit record each."""

    async def run(
        caller: Caller, request: chat_service_pb2.ChatRequest, request_id: str
    ) -> chat_service_pb2.ChatResponse:
        return await flow.complete(caller, request, request_id=request_id)

    return run


async def register_jobs(
    server: grpc.aio.Server, resources: Resources[Any], flow: ChatFlow, resolve_caller: CallerResolver
) -> JobServicer:
    """Serve JobService on ``server`` and, unless disabled, run workers whose items go through ``flow``.

    ``resources.settings`` must be a :class:`JobSettings` (GatewaySettings inherits it); ``resolve_caller``
    turns an incoming call into the authenticated :class:`Caller` (the chat RPCs' own authentication).
    """
    return await register_job_service(
        server, resources, flow_runner(flow), resolve_caller, flow.policies.authorizer
    )


async def register_job_service(
    server: grpc.aio.Server,
    resources: Resources[Any],
    runner: ItemRunner,
    resolve_caller: CallerResolver,
    authorizer: Authorizer,
) -> JobServicer:
    """:func:`register_jobs` with the item runner and the authorizer (auth's client) given directly."""
    settings = resources.settings
    if not isinstance(settings, JobSettings):
        raise TypeError("the gateway's settings must inherit JobSettings")
    database, bus = resources.require_database(), resources.require_bus()
    await bus.declare(queue.JOBS_STREAM)
    store = JobStore(database, retention_days=settings.gateway_job_retention_days)
    changes = JobChanges()
    assert settings.database_url is not None  # uses_database
    resources.spawn(changes.listener(settings.database_url).run(), name="jobs-change-listener")
    servicer = JobServicer(
        store,
        bus,
        changes,
        resolve_caller,
        authorizer,
        watch_poll_seconds=settings.gateway_job_watch_poll_seconds,
    )
    job_service_pb2_grpc.add_JobServiceServicer_to_server(servicer, server)
    if settings.gateway_job_workers_enabled:
        if settings.gateway_job_service_key_file is None or not settings.auth_address:
            raise ValueError(
                "job workers need PARAPET_GATEWAY_JOB_SERVICE_KEY_FILE (the gateway service account's API key) "
                "and PARAPET_AUTH_ADDRESS; or set PARAPET_GATEWAY_JOB_WORKERS_ENABLED=false"
            )
        callers = DelegatedCallers(settings.auth_address, settings.gateway_job_service_key_file, settings)
        resources.cleanup.push_async_callback(callers.close)
        worker = JobWorker(store, bus, callers, runner, settings)
        resources.spawn(worker.run(), name="jobs-worker")
        resources.spawn(sweep(store, bus, settings), name="jobs-sweeper")
    # Every replica expires jobs, workers or not (several at once skip each other's rows).
    expire = periodic.until_none_left(store.delete_expired, "expired jobs")
    resources.spawn(
        periodic.every(settings.gateway_job_sweep_seconds, expire, "job expiry"), name="jobs-expiry"
    )
    return servicer


async def sweep(store: JobStore, bus: Bus, settings: JobSettings) -> None:
    """Queue again what the queue may not hold: jobs whose publish failed after their submit committed, jobs
    published before the current stream was created (NATS lost its store: queued and given-back jobs alike,
    which no lease would ever bring back), and running jobs whose lease expired long ago."""
    stale = 4 * settings.gateway_job_ack_wait_seconds
    while True:
        await asyncio.sleep(settings.gateway_job_sweep_seconds)
        try:
            created = await queue.stream_created(bus)
            for tenant_id, job_id, msg_id in await store.to_requeue(stale, stream_created=created):
                await queue.enqueue(bus, tenant_id, job_id, msg_id)
                await store.mark_enqueued(tenant_id, job_id)
                log.info("job queued again", extra={"job_id": job_id})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("job sweep failed; retrying", exc_info=True)
