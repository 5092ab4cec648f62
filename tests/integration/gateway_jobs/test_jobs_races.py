"""Jobs at the edges of two moments: a worker stopped while it writes a finished item's checkpoint (the item,
already paid for, must not run again), and a repeated SubmitJob racing the DeleteJob of the job its key names."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.gateway.v1 import job_pb2, job_service_pb2
from parapet.kit import timeouts
from parapet.kit.database import Database
from services.gateway.jobs.store import JobStore
from tests.integration.gateway_jobs.conftest import Suite, batch_request, bearer, ended, watch_until
from tests.integration.gateway_jobs.test_jobs import _full_job, _key


@asynccontextmanager
async def superuser(database_url: str) -> AsyncIterator[Database]:
    """The gateway's schema as the test's database user, past row-level security."""
    database = Database(database_url, "gateway", pool_size=2, max_overflow=0)
    try:
        yield database
    finally:
        await database.close()


async def _until(predicate: Any, seconds: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await predicate():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.02)


async def test_an_item_whose_checkpoint_is_being_written_as_the_worker_stops_is_not_run_again(
    suite: Suite,
) -> None:
    """Item 0 has run (and been billed); its checkpoint waits on a row lock the test holds when the gateway
    stops. The stop cancelled the write, which rolled back, and the next worker ran (and billed) item 0 a
    second time. The write now ends on its own (within a bound) before the job is given back."""
    first = suite.runner(free_items=0)
    first.gate.clear()  # item 0 waits until the test holds the lock
    async with AsyncExitStack() as stack, superuser(suite.database_url) as database:
        jobs = await stack.enter_async_context(suite.gateway(first, gateway_job_item_concurrency=1))
        job_id = (
            await jobs.SubmitJob(batch_request(_key(), ["a", "b"]), metadata=bearer(suite.key))
        ).job.job_id
        await timeouts.within(30, first.held.wait())
        async with database.transaction() as session:
            # FOR UPDATE conflicts with the KEY SHARE lock the result's foreign key takes on the job's row.
            await session.execute(
                text("SELECT 1 FROM jobs WHERE job_id = CAST(:j AS uuid) FOR UPDATE"), {"j": job_id}
            )
            first.gate.set()  # item 0 runs, then its checkpoint waits on the lock
            await _until(lambda: _checkpoint_waiting(database), 10, "the checkpoint never waited on the lock")
            stopping = asyncio.ensure_future(stack.aclose())  # the gateway stops: its worker is cancelled
            await _until(_job_task_cancelled, 10, "the worker's job was never cancelled")
            await asyncio.sleep(0.3)  # the cancellation reaches the item, mid-write
        await stopping  # the lock is gone: the write goes through, then the job is given back
        recorded = await _recorded(database, job_id)
    assert recorded == [0], recorded
    second = suite.runner()
    async with suite.gateway(second) as jobs:
        done = await watch_until(jobs, suite.key, job_id, ended)
        full = await _full_job(jobs, suite.key, job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED and [r.index for r in full.results] == [0, 1]
    assert first.calls == {0: 1} and second.calls == {1: 1}, (first.calls, second.calls)


async def _checkpoint_waiting(database: Database) -> bool:
    async with database.transaction() as session:
        found = await session.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE 'INSERT INTO job_results%'"
            )
        )
        return bool(found.scalar())


async def _job_task_cancelled() -> bool:
    return any(task.get_name().startswith("job-") and task.cancelling() > 0 for task in asyncio.all_tasks())


async def _recorded(database: Database, job_id: str) -> list[int]:
    async with database.transaction() as session:
        found = await session.execute(
            text("SELECT item_index FROM job_results WHERE job_id = CAST(:j AS uuid) ORDER BY item_index"),
            {"j": job_id},
        )
        return [row[0] for row in found]


class _DeletingSession:
    """A session whose first ``INSERT INTO jobs`` is followed by the deletion of ``job_id``, committed by
    another connection: a DeleteJob landing between the submission's INSERT and its SELECT."""

    def __init__(self, session: AsyncSession, pending: list[Any]) -> None:
        self._session = session
        self._pending = pending  # the deletion, until done (shared by every session of the submission)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    async def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        result = await self._session.execute(statement, *args, **kwargs)
        if str(statement).startswith("INSERT INTO jobs") and self._pending:
            await self._pending.pop()()
        return result


async def test_a_repeated_submission_whose_job_is_deleted_meanwhile_makes_a_new_job(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SubmitJob with the key of a finished job: its INSERT finds the key taken (DO NOTHING), then DeleteJob
    commits, then its SELECT finds no job. ``.one()`` raised and the caller got INTERNAL. The key is free
    again, so the submission makes a new job, as it would have a moment later."""
    key = _key()
    request = batch_request(key, ["a"])
    async with superuser(suite.database_url) as database:
        async with suite.gateway(suite.runner(), gateway_job_workers_enabled=False) as jobs:
            old = (await jobs.SubmitJob(request, metadata=bearer(suite.key))).job
            cancel = job_service_pb2.CancelJobRequest(job_id=old.job_id)
            await jobs.CancelJob(cancel, metadata=bearer(suite.key))  # finished: it may be deleted

            async def delete() -> None:
                async with database.transaction() as session:
                    await session.execute(
                        text("DELETE FROM jobs WHERE job_id = CAST(:j AS uuid)"), {"j": old.job_id}
                    )

            tenant, pending = JobStore.tenant, [delete]

            @asynccontextmanager
            async def racing(self: JobStore, tenant_id: str) -> AsyncIterator[Any]:
                scoped: AbstractAsyncContextManager[AsyncSession] = tenant(self, tenant_id)
                async with scoped as session:
                    yield _DeletingSession(session, pending)

            monkeypatch.setattr(JobStore, "tenant", racing)
            again = (await jobs.SubmitJob(request, metadata=bearer(suite.key))).job
            monkeypatch.undo()
            assert not pending, "the race was not staged"
            assert again.job_id != old.job_id
            assert again.state == job_pb2.JOB_STATE_QUEUED and again.progress.total_items == 1
            fetched = await jobs.GetJob(
                job_service_pb2.GetJobRequest(job_id=again.job_id), metadata=bearer(suite.key)
            )
            assert fetched.job.job_id == again.job_id
