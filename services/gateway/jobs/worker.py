"""The job worker: pulls job ids from the work queue, leases the job, runs its unfinished items through the
chat flow with bounded concurrency, checkpoints each finished item, and acknowledges once the job is over.

Durability, step by step:
- the lease (``jobs.worker``/``lease_expire_time``) makes a job run on one worker at a time, even when the
  sweeper queued it twice (within a process, which holds one lease, ``_active`` does); it is renewed every
  third of ``ack_wait``, as JetStream is told ``in_progress``, each whether or not the other got through;
- each finished item is one transaction (result row, counters, notification): a resumed job reads the
  finished indices and runs only the others, so no finished item is run (or charged) twice. A checkpoint the
  database refuses is tried again within one lease; one that still fails stops new items and fails the attempt
  (the job is given back);
- the message is acknowledged only after the terminal state is committed. A stopping worker releases the
  lease and naks (immediate redelivery); a dead one simply stops renewing, and after ``ack_wait`` JetStream
  redelivers the job to another worker, whose claim succeeds because the lease expired with it.
An item in flight when its worker died or stopped is run again by the next one: its outcome was never recorded.
Each run of the job (``JobRow.runs``) gives its items request ids of their own (``submission.item_request_id``),
so a rerun is a chat of its own downstream, budget-checked and billed.

Only deliveries that end without the worker giving the job back (a crash, a lost lease, a failure the worker
did not expect) count toward ``gateway_job_max_attempts``: a give-back for a dependency outage or a shutdown
takes its attempt back.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import grpc.aio
from nats.aio.msg import Msg

from parapet.gateway.v1 import chat_service_pb2, job_pb2
from parapet.kit.bus import Bus
from parapet.kit.context import deadline_passed, deadline_var
from parapet.kit.durable import DurableConsumer
from parapet.kit.errors import DeadlineExceeded, Internal, ParapetError, Unavailable
from parapet.kit.timeouts import cancel_and_wait, within
from parapet.status.v1 import status_pb2
from services.gateway.caller import Caller
from services.gateway.jobs import queue, submission
from services.gateway.jobs.delegation import DelegatedCallers, DelegatorRefused, RenewingCaller
from services.gateway.jobs.records import status_of
from services.gateway.jobs.settings import JobSettings
from services.gateway.jobs.store import DELETED, ItemOutcome, JobRow, JobStore

log = logging.getLogger(__name__)

ItemRunner = Callable[[Caller, chat_service_pb2.ChatRequest, str], Awaitable[chat_service_pb2.ChatResponse]]

# Auth refusing the submitter's principal is final for the job (revoked key, disabled tenant...); anything
# else from auth (UNAVAILABLE, a deadline) is a reason to try the job again later. A refusal of the gateway's
# own credential (UNAUTHENTICATED, PERMISSION_MISSING) is no verdict on the job: it arrives as
# DelegatorRefused and the job waits (until 2026-12-06 UNAUTHENTICATED was final here, and a rotation of the
# gateway's key failed every job claimed after it).
_FINAL_AUTH_CODES = frozenset(
    {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
    }
)
# Auth could not answer: the job is given back without using up an attempt (an outage is not the job's doing):
# down, too slow, shedding load, or the call cut as auth restarted.
_AUTH_DOWN_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)
_STEP_TIMEOUT = 2.0  # bound on best-effort messages to NATS and the database while stopping
_UNEXPECTED_RETRY_SECONDS = 30.0  # a claim that failed for no known reason is retried this much later
_CHECKPOINT_FIRST_RETRY_SECONDS = 0.25  # a checkpoint the database refused is tried again, doubling the pause


@dataclass
class _Run:
    """What one run of a job has learned while its items run."""

    cancelled: bool = False
    lease_lost: bool = False
    fatal: status_pb2.Status | None = None  # the submitter may no longer act (from auth)
    retry: bool = False  # a dependency failed: give the job back for a later attempt
    # ...because auth could not answer, or refused the gateway's own credential (the attempt is not counted)
    auth_down: bool = False
    # A finished item's checkpoint could not be written: the attempt fails (raised once the running items end).
    checkpoint_failed: bool = False

    @property
    def stop(self) -> bool:
        return (
            self.cancelled
            or self.lease_lost
            or self.fatal is not None
            or self.retry
            or self.checkpoint_failed
        )


class JobWorker:
    def __init__(
        self,
        store: JobStore,
        bus: Bus,
        callers: DelegatedCallers,
        runner: ItemRunner,
        settings: JobSettings,
        *,
        worker_id: str | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._callers = callers
        self._runner = runner
        self._settings = settings
        self.worker_id = worker_id or f"worker-{uuid.uuid4().hex[:12]}"
        self._lease = settings.gateway_job_ack_wait_seconds
        # Jobs this process is running. The lease is per process (``worker_id``), and a claim of our own lease
        # succeeds (a job we gave back without releasing, say): a second message for a job running here (the
        # sweeper's re-queue, a redelivery) must wait here instead, or the job runs twice at once.
        self._active: set[str] = set()

    async def run(self) -> None:
        """Pull and run jobs until cancelled (the kit cancels it on shutdown: running jobs are given back)."""
        # Subscribed at the first fetch, and again after a failed one: the durable, or the stream, may be gone
        # with a NATS that lost its store, and a subscription bound to it would fail for ever (parapet.kit.durable).
        consumer = DurableConsumer(
            self._bus,
            queue.JOBS_STREAM,
            queue.SUBJECT,
            queue.consumer_config(self._lease, max_ack_pending=10_000),
        )
        slots = asyncio.Semaphore(self._settings.gateway_job_parallel_jobs)
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                await slots.acquire()
                try:
                    messages = await consumer.fetch(1, 5.0)
                except Exception:
                    slots.release()
                    log.warning("job queue fetch failed; subscribing again", exc_info=True)
                    await asyncio.sleep(1.0)
                    continue
                if not messages:
                    slots.release()
                    continue
                for message in messages:
                    task = asyncio.create_task(self.handle(message), name=f"job-{message.data[:80]!r}")
                    running.add(task)
                    task.add_done_callback(running.discard)
                    task.add_done_callback(lambda _done: slots.release())
        finally:
            await asyncio.gather(*(cancel_and_wait(task) for task in list(running)))

    async def handle(self, message: Msg) -> None:
        parsed = queue.parse_body(message.data)
        if parsed is None:
            log.error("malformed job message dropped", extra={"body": message.data[:200]})
            await message.term()
            return
        tenant_id, job_id = parsed
        if job_id in self._active:
            await message.nak(delay=self._lease)  # acknowledged or dropped once the run here has ended
            return
        self._active.add(job_id)
        try:
            await self._handle(message, tenant_id, job_id)
        finally:
            self._active.discard(job_id)

    async def _handle(self, message: Msg, tenant_id: str, job_id: str) -> None:
        try:
            claim = await self._store.claim(tenant_id, job_id, self.worker_id, self._lease)
        except ParapetError:
            log.warning("cannot claim job; retrying later", exc_info=True, extra={"job_id": job_id})
            await message.nak(delay=1.0)
            return
        except Exception:
            # Not a database outage (those are ParapetErrors): a bug or a row the code cannot read. Logged
            # loudly and retried slowly rather than lost; the message is the job's only trigger.
            log.exception("claiming a job failed unexpectedly; retrying later", extra={"job_id": job_id})
            await message.nak(delay=_UNEXPECTED_RETRY_SECONDS)
            return
        if claim.job is None or claim.job.terminal:
            await message.ack()  # nothing left to do (finished, cancelled, or a duplicate message)
            return
        if not claim.granted:
            await message.nak(delay=max(claim.lease_left, 0.5))  # another worker holds a live lease
            return
        job = claim.job
        # ``attempts`` counts this delivery and each earlier one that ended without a give-back.
        if job.attempts > self._settings.gateway_job_max_attempts:
            tried = job.attempts - 1
            error = Internal(
                f"the job did not finish in {tried} attempt{'' if tried == 1 else 's'}",
                reason="JOB_ATTEMPTS_EXHAUSTED",
            )
            await self._store.finish(
                tenant_id, job_id, self.worker_id, error=status_of(error).SerializeToString()
            )
            await message.ack()
            return
        log.info(
            "job started",
            extra={"job_id": job_id, "tenant_id": tenant_id, "attempt": job.attempts, "run": job.runs},
        )
        try:
            await self._run_claimed(message, job)
        except asyncio.CancelledError:
            # Stopping: give the job back at once rather than after the lease; its finished items are kept.
            await asyncio.shield(self._give_back(message, job, delay=None, count_attempt=False))
            raise
        except ParapetError:
            # A dependency failed (a checkpoint or a lease renewal met a database outage): not the job's doing.
            log.warning("job attempt failed; it will be retried", exc_info=True, extra={"job_id": job_id})
            await self._give_back(message, job, delay=2.0, count_attempt=False)
        except Exception:
            # Not an outage: a bug, or a job the code cannot run (say, a spec it cannot read), which would fail
            # the same way every time. Counted, so that it ends JOB_ATTEMPTS_EXHAUSTED instead of circulating.
            log.exception("job attempt failed unexpectedly; it will be retried", extra={"job_id": job_id})
            await self._give_back(message, job, delay=2.0, count_attempt=True)

    async def _give_back(
        self, message: Msg, job: JobRow, delay: float | None, *, count_attempt: bool
    ) -> None:
        """Release the lease (taking the attempt back unless ``count_attempt``) and nak for a redelivery."""
        for step in (
            self._store.release(job.tenant_id, job.job_id, self.worker_id, count_attempt=count_attempt),
            message.nak(delay=delay),
        ):
            try:
                await within(_STEP_TIMEOUT, step)
            except Exception:
                log.warning("giving a job back failed; its lease will expire", extra={"job_id": job.job_id})

    async def _run_claimed(self, message: Msg, job: JobRow) -> None:
        run = _Run()
        caller = RenewingCaller(self._callers, job.tenant_id, job.subject, job.api_key_id)
        heartbeat = asyncio.create_task(self._heartbeat(message, job, run))
        try:
            try:
                await caller.get()  # the submitter may still act? (fails the job before any item runs)
            except (grpc.aio.AioRpcError, DelegatorRefused) as error:
                self._auth_failed(error, run)
            if not run.stop:
                # The token took a round trip to auth since the claim: a cancel meanwhile is heard here, before
                # any item starts, rather than at the first checkpoint after a batch of items already ran.
                await self._check_in(job, run)
            if not run.stop:
                await self._run_items(job, caller, run)
        finally:
            await cancel_and_wait(heartbeat)
        await self._conclude(message, job, run)

    async def _conclude(self, message: Msg, job: JobRow, run: _Run) -> None:
        if run.lease_lost:
            # Another worker took the job over (we stalled past the lease): it acknowledges, not us.
            log.warning("job lease lost", extra={"job_id": job.job_id})
            return
        if run.retry:
            # Auth unreachable, or refusing the gateway's own key (logged as an error, naming the key file):
            # not the job's doing. Any other error of auth's (INTERNAL for this principal, say) may repeat for
            # ever, so it counts toward the attempts limit.
            await self._give_back(message, job, delay=5.0, count_attempt=not run.auth_down)
            return
        if not run.cancelled:
            fatal = None if run.fatal is None else run.fatal.SerializeToString()
            await self._store.finish(job.tenant_id, job.job_id, self.worker_id, error=fatal)
        await message.ack()
        log.info(
            "job ended",
            extra={"job_id": job.job_id, "cancelled": run.cancelled, "failed": run.fatal is not None},
        )

    def _auth_failed(self, error: grpc.aio.AioRpcError | DelegatorRefused, run: _Run) -> None:
        if isinstance(error, DelegatorRefused):
            # The gateway's own credential (DelegatedCallers dropped it and reads the key file again).
            run.retry = run.auth_down = True
        elif error.code() in _FINAL_AUTH_CODES:
            run.fatal = status_of(error)
        else:
            run.retry = True
            run.auth_down = error.code() in _AUTH_DOWN_CODES

    async def _heartbeat(self, message: Msg, job: JobRow, run: _Run) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            # Each step on its own: the lease in PostgreSQL is what stops a second run when JetStream redelivers
            # the job (its progress reports refused by NATS), so a failed report must not skip its renewal.
            try:
                await message.in_progress()
            except Exception:
                log.warning(
                    "reporting a job's progress to NATS failed", exc_info=True, extra={"job_id": job.job_id}
                )
            try:
                await self._check_in(job, run)
            except Exception:
                log.warning("renewing a job's lease failed", exc_info=True, extra={"job_id": job.job_id})

    async def _check_in(self, job: JobRow, run: _Run) -> None:
        """Renew the lease and take in what happened to the job meanwhile: cancelled, deleted, or taken over."""
        state = await self._store.renew(job.tenant_id, job.job_id, self.worker_id, self._lease)
        if state is None:
            run.lease_lost = True
        elif state in ("cancelled", DELETED):
            run.cancelled = True

    async def _run_items(self, job: JobRow, caller: RenewingCaller, run: _Run) -> None:
        assert job.spec is not None
        batch = job_pb2.ChatBatch.FromString(job.spec)
        finished = await self._store.finished_indices(job.tenant_id, job.job_id)
        slots = asyncio.Semaphore(self._settings.gateway_job_item_concurrency)
        tasks: list[asyncio.Task[None]] = []
        try:
            for index in range(job.total_items):
                if index in finished:
                    continue
                await slots.acquire()
                if run.stop:
                    slots.release()
                    break
                task = asyncio.create_task(self._item(job, batch.requests[index], index, caller, run))
                task.add_done_callback(lambda _done: slots.release())
                tasks.append(task)
            results = await asyncio.gather(*tasks, return_exceptions=True)
        except BaseException:
            await asyncio.gather(*(cancel_and_wait(task) for task in tasks))
            raise
        for result in results:
            if isinstance(result, BaseException):
                raise result  # a checkpoint could not be written: the attempt failed, retry the job

    async def _item(
        self, job: JobRow, item: chat_service_pb2.ChatRequest, index: int, caller: RenewingCaller, run: _Run
    ) -> None:
        try:
            current = await caller.get()
        except (grpc.aio.AioRpcError, DelegatorRefused) as error:
            self._auth_failed(error, run)  # not recorded: the item did not run
            return
        request = submission.item_request(item, job.metadata)
        request_id = submission.item_request_id(job.job_id, index, job.runs)
        timeout = self._settings.gateway_job_item_timeout_seconds
        # The item's limit is its deadline, put where an RPC's own would be (this task's context only): the
        # flow's calls to other services get the time left, and the flow stopped by the limit records
        # DEADLINE_EXCEEDED. Without it the flow saw only a cancellation and audited the item CANCELLED.
        limit = deadline_var.set(time.monotonic() + timeout)
        try:
            response = await within(timeout, self._runner(current, request, request_id))
            outcome = _succeeded(index, response)
        except ParapetError as error:
            if error.code == grpc.StatusCode.DEADLINE_EXCEEDED and deadline_passed():
                # A call of the flow's reached the item's deadline first (it gets the time left, less a
                # margin): the item's limit, not a dependency that did not answer.
                outcome = _late(index, timeout)
            else:
                outcome = ItemOutcome(index, error=status_of(error).SerializeToString())
        except TimeoutError:
            outcome = _late(index, timeout)
        except grpc.aio.AioRpcError as error:
            outcome = ItemOutcome(index, error=status_of(error).SerializeToString())
        except Exception:
            log.exception("job item failed unexpectedly", extra={"job_id": job.job_id, "index": index})
            crash = Internal("the item failed inside the gateway")
            outcome = ItemOutcome(index, error=status_of(crash).SerializeToString())
        finally:
            deadline_var.reset(limit)  # the checkpoint below is the worker's own work, not the item's
        try:
            state = await self._checkpoint_shielded(job, outcome)
        except Exception:
            # No new item may start: it would reach the model and be billed, and its result, which the
            # database would refuse too, be lost and the item run again on the next attempt.
            run.checkpoint_failed = True
            raise
        if state in ("cancelled", DELETED):
            run.cancelled = True

    async def _checkpoint_shielded(self, job: JobRow, outcome: ItemOutcome) -> str:
        """``_checkpoint``, left to end on its own when the item is cancelled meanwhile (a stopping worker):
        the outcome is already paid for, and a checkpoint cut mid-write was rolled back, so the next run ran
        (and billed) the item again. It gets ``_STEP_TIMEOUT`` after the cancellation, then the cancellation
        goes on (the write, if still unfinished then, is cancelled: the item is run again, as before)."""
        write = asyncio.ensure_future(self._checkpoint(job, outcome))
        try:
            return await asyncio.shield(write)
        except asyncio.CancelledError:
            done, _pending = await asyncio.wait([write], timeout=_STEP_TIMEOUT)
            if not done:
                await cancel_and_wait(write)
                log.warning(
                    "a stopping worker could not checkpoint an item in time; it will run again",
                    extra={"job_id": job.job_id, "index": outcome.index},
                )
            elif write.cancelled() or write.exception() is not None:
                log.warning(
                    "a stopping worker's checkpoint failed; the item will run again",
                    extra={"job_id": job.job_id, "index": outcome.index},
                )
            raise

    async def _checkpoint(self, job: JobRow, outcome: ItemOutcome) -> str:
        """``record_item``, tried again while the database is unavailable: the outcome is already paid for, and
        one lost means running (and billing) the item again. Retries stay within one lease, past which another
        worker may take the job over; after that the error is raised (the job is given back).
        ``record_item`` is idempotent, so a retry after a commit whose answer was lost changes nothing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lease
        pause = _CHECKPOINT_FIRST_RETRY_SECONDS
        while True:
            try:
                return await self._store.record_item(job.tenant_id, job.job_id, outcome)
            except Unavailable:
                if loop.time() + pause > deadline:
                    raise
                log.warning(
                    "checkpointing a job item failed; retrying",
                    exc_info=True,
                    extra={"job_id": job.job_id, "index": outcome.index},
                )
                await asyncio.sleep(pause)
                pause *= 2


def _late(index: int, timeout: float) -> ItemOutcome:
    late = DeadlineExceeded(f"the item did not finish within {timeout:g} s", reason="JOB_ITEM_TIMEOUT")
    return ItemOutcome(index, error=status_of(late).SerializeToString())


def _succeeded(index: int, response: chat_service_pb2.ChatResponse) -> ItemOutcome:
    usage = response.summary.usage
    return ItemOutcome(
        index,
        response=response.SerializeToString(),
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        estimated=usage.estimated,
        cost_micros=response.summary.cost.amount_micros,
        currency_code=response.summary.cost.currency_code,
    )
