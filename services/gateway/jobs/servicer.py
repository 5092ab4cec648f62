"""JobService: SubmitJob, GetJob, WatchJob, CancelJob, ListJobs, ListJobResults, DeleteJob, for the caller's
tenant (from its credential).

A caller sees the jobs it submitted (same subject); a holder of PERMISSION_ADMIN sees every job of its tenant.
Any other job, and every job of another tenant (row-level security), is NOT_FOUND: its existence is not
disclosed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc.aio

from parapet.auth.v1 import permission_pb2
from parapet.gateway.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from parapet.kit import paging
from parapet.kit.bus import Bus
from parapet.kit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from parapet.kit.timeouts import wait_event
from services.gateway.authorization import Authorizer
from services.gateway.caller import Caller
from services.gateway.jobs import queue, submission
from services.gateway.jobs.changes import JobChanges
from services.gateway.jobs.records import STATES, job_message, progress_key, result_message
from services.gateway.jobs.store import JobRow, JobStore, ResultRow, result_size

log = logging.getLogger(__name__)
pb = job_service_pb2

# GetJob's JOB_VIEW_FULL answers in one message: its results must leave room for the rest of the job within
# gRPC's default 4 MiB receive limit, which is what most clients keep.
FULL_VIEW_MAX_BYTES = 4 * 1024 * 1024 - 64 * 1024

# Every declared JobState but UNSPECIFIED, as the store names it.
_STORED_STATES = {number: name for name, number in STATES.items()}

# The feature auth's policy sees on every JobService decision (a tenant may restrict features by role).
_FEATURE = "jobs"

CallerResolver = Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[Caller]]


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    def __init__(
        self,
        store: JobStore,
        bus: Bus,
        changes: JobChanges,
        resolve_caller: CallerResolver,
        authorizer: Authorizer,
        *,
        watch_poll_seconds: float,
    ) -> None:
        self._store = store
        self._bus = bus
        self._changes = changes
        self._resolve = resolve_caller
        self._authorizer = authorizer
        self._poll = watch_poll_seconds

    async def _is_admin(self, caller: Caller) -> bool:
        decision = await self._authorizer.decide(caller, permission_pb2.PERMISSION_ADMIN, feature=_FEATURE)
        return decision.allowed

    async def _visible(self, caller: Caller, job_id: str, *, full: bool = False) -> JobRow:
        if not job_id:
            raise InvalidArgument("job_id is required", field_violations=[("job_id", "required")])
        row = await self._store.get(caller.tenant_id, job_id)
        if row is not None and row.subject != caller.principal.subject:
            row = row if await self._is_admin(caller) else None
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
        await self._authorizer.require(
            caller, permission_pb2.PERMISSION_CHAT, why="submitting jobs", feature=_FEATURE
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
            if not submission.same_job(row.spec_sha256, principal.subject, batch, request.metadata):
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
        row = await self._visible(caller, request.job_id)
        if request.view != job_pb2.JOB_VIEW_FULL:
            return pb.GetJobResponse(job=job_message(row))
        results = await self._store.results(caller.tenant_id, row.job_id, max_bytes=FULL_VIEW_MAX_BYTES)
        if results is None:
            raise FailedPrecondition(
                "this job's results do not fit in one message; read them with ListJobResults",
                reason="JOB_RESULTS_TOO_LARGE",
                metadata={"resource": f"jobs/{row.job_id}", "max_bytes": str(FULL_VIEW_MAX_BYTES)},
            )
        # Counters and results from one moment: re-read the row after the results (it only grows). Gone by
        # then, it may have been deleted before the results were read, which went with it: none is no answer.
        current = await self._store.get(caller.tenant_id, row.job_id)
        if current is None:
            raise _deleted(row.job_id)
        return pb.GetJobResponse(job=job_message(current, results))

    async def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListJobsResponse:
        caller = await self._resolve(context)
        size = paging.page_size(request.page_size, default=50)
        states = [_STORED_STATES.get(state) for state in request.states]
        if None in states:  # JOB_STATE_UNSPECIFIED (the kit refuses numbers JobState does not declare)
            index = states.index(None)
            raise InvalidArgument(
                "JOB_STATE_UNSPECIFIED is not a state to list",
                field_violations=[(f"states[{index}]", "JOB_STATE_UNSPECIFIED")],
            )
        if request.all_users and request.user_id:
            raise InvalidArgument(
                "user_id and all_users exclude each other",
                field_violations=[("user_id", "must be empty when all_users is set")],
            )
        own = caller.principal.subject
        subject = None if request.all_users else (request.user_id or own)
        if subject != own:
            await self._authorizer.require(
                caller, permission_pb2.PERMISSION_ADMIN, why="listing other users' jobs", feature=_FEATURE
            )
        query = paging.query_key(request, caller.tenant_id, own)
        before = paging.decode_moment_and_id(request.page_token, query)
        rows = await self._store.list_jobs(
            caller.tenant_id,
            subject=subject,
            states=[state for state in states if state is not None],
            before=before,
            limit=size + 1,
        )
        page = rows[:size]
        token = ""
        if len(rows) > size:
            token = paging.encode([page[-1].create_time.isoformat(), page[-1].job_id], query)
        return pb.ListJobsResponse(jobs=[job_message(row) for row in page], next_page_token=token)

    async def ListJobResults(
        self, request: pb.ListJobResultsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListJobResultsResponse:
        caller = await self._resolve(context)
        size = paging.page_size(request.page_size)
        query = paging.query_key(request, caller.tenant_id, caller.principal.subject)
        start = paging.decode_number(request.page_token, query) or 0  # the first item index not yet read
        row = await self._visible(caller, request.job_id)
        found = await self._store.results_page(caller.tenant_id, row.job_id, start=start, limit=size + 1)
        # A job's results are deleted with it, in one transaction: results found were read while it existed,
        # but none found may mean it was deleted since it was read above (DeleteJob, the expiry), and an empty
        # last page would tell the reader that it has every result.
        if not found and await self._store.get(caller.tenant_id, row.job_id) is None:
            raise _deleted(row.job_id)
        page, start = _page_of_results(found, start, size, finished=row.terminal)
        # While the job runs, more results may come: the caller keeps a token to read them later from here.
        # (The row was read before the results, so a job seen terminal has all its results in the page's read.)
        more = len(page) < len(found)
        token = paging.encode([start], query) if more or not row.terminal else ""
        return pb.ListJobResultsResponse(
            results=[result_message(result) for result in page], next_page_token=token
        )

    async def DeleteJob(
        self, request: pb.DeleteJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteJobResponse:
        caller = await self._resolve(context)
        try:
            row = await self._visible(caller, request.job_id)
        except NotFound:
            if request.allow_missing:
                return pb.DeleteJobResponse(deleted=False)
            raise
        kept = await self._store.delete(caller.tenant_id, row.job_id)
        if kept == "missing":  # deleted by someone else (or expired) since we read it
            if request.allow_missing:
                return pb.DeleteJobResponse(deleted=False)
            raise NotFound("no such job", metadata={"resource": f"jobs/{row.job_id}"})
        if kept is not None:
            raise FailedPrecondition(
                "only a finished job can be deleted; cancel it first",
                reason="JOB_NOT_FINISHED",
                metadata={"resource": f"jobs/{row.job_id}", "state": kept},
            )
        log.info("job deleted", extra={"job_id": row.job_id})
        return pb.DeleteJobResponse(deleted=True)

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
                current = await self._store.get(caller.tenant_id, row.job_id)
                if current is None:  # deleted meanwhile (it had ended: only finished jobs are deleted)
                    raise _deleted(row.job_id)
                row = current
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


def _deleted(job_id: str) -> NotFound:
    return NotFound("the job was deleted", metadata={"resource": f"jobs/{job_id}"})


def _page_of_results(
    found: list[ResultRow], start: int, size: int, *, finished: bool
) -> tuple[list[ResultRow], int]:
    """The page to return from ``found`` (results from index ``start`` on, in index order) and the index the
    next page starts at.

    A page holds at most ``size`` results and, past its first, no more than ``FULL_VIEW_MAX_BYTES``. While the
    job runs it stops at the first item not finished yet: items finish in any order (several run at once, and
    a resumed job reruns what was in flight), so a later call from that index finds what finished since. Once
    the job ended, the items missing are ones that never ran, and the page goes past them.
    """
    page: list[ResultRow] = []
    used = 0
    for result in found[:size]:
        index = result[0]
        if not finished and index != start:
            break
        used += result_size(result)
        if page and used > FULL_VIEW_MAX_BYTES:
            break
        page.append(result)
        start = index + 1
    return page, start
