"""JobService: SubmitJob, GetJob, WatchJob, CancelJob, for the caller's tenant (from its credential).

A caller sees the jobs it submitted (same subject); a holder of PERMISSION_ADMIN sees every job of its tenant.
Any other job, and every job of another tenant (row-level security), is NOT_FOUND: its existence is not
disclosed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc.aio

from parapet import clients
from parapet.auth.v1 import auth_service_pb2, permission_pb2
from parapet.gateway.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from parapet.kit.bus import Bus
from parapet.kit.config import ServiceSettings
from parapet.kit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from parapet.kit.timeouts import wait_event
from services.gateway.caller import Caller
from services.gateway.jobs import queue, submission
from services.gateway.jobs.changes import JobChanges
from services.gateway.jobs.records import job_message, progress_key
from services.gateway.jobs.store import JobRow, JobStore

log = logging.getLogger(__name__)
pb = job_service_pb2

CallerResolver = Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[Caller]]


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    def __init__(
        self,
        store: JobStore,
        bus: Bus,
        changes: JobChanges,
        resolve_caller: CallerResolver,
        settings: ServiceSettings,
        *,
        watch_poll_seconds: float,
    ) -> None:
        if not settings.auth_address:
            raise ValueError("JobService needs auth_address (PARAPET_AUTH_ADDRESS) to authorize callers")
        self._store = store
        self._bus = bus
        self._changes = changes
        self._resolve = resolve_caller
        self._auth = clients.auth(settings.auth_address, settings)
        self._poll = watch_poll_seconds

    async def close(self) -> None:
        await self._auth.close()

    async def _allowed(
        self, caller: Caller, permission: permission_pb2.Permission.ValueType
    ) -> tuple[bool, str]:
        decision = await self._auth.stub.Authorize(
            auth_service_pb2.AuthorizeRequest(permission=permission, feature="jobs"),
            metadata=caller.auth_metadata(),
            timeout=5.0,
        )
        return decision.allowed, decision.reason

    async def _visible(self, caller: Caller, job_id: str, *, full: bool = False) -> JobRow:
        if not job_id:
            raise InvalidArgument("job_id is required", field_violations=[("job_id", "required")])
        row = await self._store.get(caller.tenant_id, job_id)
        if row is not None and row.subject != caller.principal.subject:
            admin, _reason = await self._allowed(caller, permission_pb2.PERMISSION_ADMIN)
            row = row if admin else None
        if row is None:
            raise NotFound("no such job", metadata={"resource": f"jobs/{job_id}"})
        return row

    async def SubmitJob(
        self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SubmitJobResponse:
        caller = await self._resolve(context)
        submission.validate(request)
        principal = caller.principal
        if principal.credential_type != "api_key" or not principal.api_key_id:
            # The job runs later under a token auth re-issues for the key (docs/gateway-jobs.md); an OIDC
            # token's claims cannot be re-read once it expired, and no credential is ever stored.
            raise FailedPrecondition(
                "jobs must be submitted with an API key (an OIDC session cannot be acted for later)",
                reason="JOB_CREDENTIAL_NOT_DELEGABLE",
            )
        allowed, reason = await self._allowed(caller, permission_pb2.PERMISSION_CHAT)
        if not allowed:
            raise PermissionDenied(
                "submitting jobs needs the chat permission", reason=reason, metadata={"permission": "chat"}
            )
        batch = request.chat_batch
        row, created = await self._store.create(
            caller.tenant_id,
            idempotency_key=request.idempotency_key,
            spec_sha256=submission.fingerprint(principal.subject, batch, request.metadata),
            spec=batch.SerializeToString(deterministic=True),
            metadata=dict(request.metadata),
            subject=principal.subject,
            api_key_id=principal.api_key_id,
            total_items=len(batch.requests),
        )
        if not created:
            if row.spec_sha256 != submission.fingerprint(principal.subject, batch, request.metadata):
                raise AlreadyExists(
                    "this idempotency_key was used for a different job",
                    reason="IDEMPOTENCY_KEY_REUSED",
                    metadata={"idempotency_key": request.idempotency_key},
                )
            return pb.SubmitJobResponse(job=job_message(row))
        try:
            await queue.enqueue(self._bus, caller.tenant_id, row.job_id)
            await self._store.mark_enqueued(caller.tenant_id, row.job_id)
        except Exception:
            # The job is committed: the sweeper queues it (docs/gateway-jobs.md). Accepted is never lost.
            log.warning(
                "queueing a new job failed; the sweeper will", exc_info=True, extra={"job_id": row.job_id}
            )
        log.info("job submitted", extra={"job_id": row.job_id, "items": row.total_items})
        return pb.SubmitJobResponse(job=job_message(row))

    async def GetJob(
        self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetJobResponse:
        caller = await self._resolve(context)
        if request.view not in job_pb2.JobView.values():
            raise InvalidArgument("unknown view", field_violations=[("view", "not a JobView")])
        row = await self._visible(caller, request.job_id)
        if request.view != job_pb2.JOB_VIEW_FULL:
            return pb.GetJobResponse(job=job_message(row))
        results = await self._store.results(caller.tenant_id, row.job_id)
        # Counters and results from one moment: re-read the row after the results (it only grows).
        row = await self._store.get(caller.tenant_id, row.job_id) or row
        return pb.GetJobResponse(job=job_message(row, results))

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchJobResponse]:
        caller = await self._resolve(context)
        row = await self._visible(caller, request.job_id)
        with self._changes.subscribe(row.job_id) as changed:
            # Read again now that changes are heard, so none falls between the first read and the wait.
            row = await self._store.get(caller.tenant_id, row.job_id) or row
            yield pb.WatchJobResponse(job=job_message(row))
            last = progress_key(row)
            while not row.terminal:
                await wait_event(changed, self._poll)
                changed.clear()
                row = await self._store.get(caller.tenant_id, row.job_id) or row
                if progress_key(row) != last:
                    last = progress_key(row)
                    yield pb.WatchJobResponse(job=job_message(row))

    async def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CancelJobResponse:
        caller = await self._resolve(context)
        row = await self._visible(caller, request.job_id)
        if not row.terminal:
            await self._store.cancel(caller.tenant_id, row.job_id)
            row = await self._store.get(caller.tenant_id, row.job_id) or row
            log.info("job cancelled", extra={"job_id": row.job_id, "state": row.state})
        return pb.CancelJobResponse(job=job_message(row))
