"""A job's results read a page at a time, a finished job deleted by its submitter or by expiry, over real auth,
PostgreSQL, NATS and channels."""

from __future__ import annotations

import asyncio
import datetime

import grpc
import grpc.aio
import pytest
from sqlalchemy import text

from parapet.gateway.v1 import chat_service_pb2, job_pb2, job_service_pb2, job_service_pb2_grpc
from parapet.kit import timeouts
from parapet.kit.database import Database
from parapet.kit.errors import error_details
from parapet.kit.testing import refusal
from services.gateway.caller import Caller
from services.gateway.jobs import servicer as job_servicer
from services.gateway.jobs.store import RESULT_FRAMING_BYTES
from tests.integration.gateway_jobs.conftest import (
    Runner,
    Suite,
    batch_request,
    bearer,
    ended,
    succeeded_at_least,
    watch_until,
)
from tests.integration.gateway_jobs.test_jobs import _full_job, _key


async def _stored(database_url: str, job_id: str) -> tuple[int, int]:
    """(job rows, result rows) of ``job_id`` as PostgreSQL holds them, read past row-level security."""
    database = Database(database_url, "gateway", pool_size=1, max_overflow=0)
    try:
        async with database.transaction() as session:
            jobs = await session.execute(
                text("SELECT count(*) FROM jobs WHERE job_id::text = :j"), {"j": job_id}
            )
            results = await session.execute(
                text("SELECT count(*) FROM job_results WHERE job_id::text = :j"), {"j": job_id}
            )
            return int(jobs.scalar_one()), int(results.scalar_one())
    finally:
        await database.close()


async def _expire_now(database_url: str, job_id: str) -> None:
    database = Database(database_url, "gateway", pool_size=1, max_overflow=0)
    try:
        async with database.transaction() as session:
            await session.execute(
                text("UPDATE jobs SET expire_time = now() - interval '1 second' WHERE job_id::text = :j"),
                {"j": job_id},
            )
    finally:
        await database.close()


async def _finished_job(jobs: job_service_pb2_grpc.JobServiceStub, key: str, questions: list[str]) -> str:
    job_id: str = (await jobs.SubmitJob(batch_request(_key(), questions), metadata=bearer(key))).job.job_id
    done = await watch_until(jobs, key, job_id, ended)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    return job_id


async def _pages(
    jobs: job_service_pb2_grpc.JobServiceStub, key: str, job_id: str, size: int
) -> list[list[int]]:
    pages, token = [], ""
    while True:
        reply = await jobs.ListJobResults(
            job_service_pb2.ListJobResultsRequest(job_id=job_id, page_size=size, page_token=token),
            metadata=bearer(key),
        )
        pages.append([result.index for result in reply.results])
        token = reply.next_page_token
        if not token:
            return pages


async def test_results_are_read_a_page_at_a_time_in_item_order(suite: Suite) -> None:
    async with suite.gateway(suite.runner()) as jobs:
        questions = [f"q{i}" for i in range(7)]
        job_id = await _finished_job(jobs, suite.key, questions)
        assert await _pages(jobs, suite.key, job_id, 3) == [[0, 1, 2], [3, 4, 5], [6]]
        assert await _pages(jobs, suite.key, job_id, 0) == [list(range(7))]  # 0: the default size
        first = await jobs.ListJobResults(
            job_service_pb2.ListJobResultsRequest(job_id=job_id, page_size=2), metadata=bearer(suite.key)
        )
        assert [r.response.text for r in first.results] == ["answer to q0", "answer to q1"]
        # Each page holds exactly what GetJob's full view holds for those items.
        full = await _full_job(jobs, suite.key, job_id)
        assert list(first.results) == list(full.results[:2])

        # A token is bound to its job and its caller; a negative size is refused; strangers see nothing.
        other = await _finished_job(jobs, suite.key, ["x", "y", "z"])
        _admin_id, admin = await suite.new_member("root", roles=("admin",))
        _bob_id, bob = await suite.new_member("bob")
        for request, key, expected in (
            (
                job_service_pb2.ListJobResultsRequest(job_id=other, page_token=first.next_page_token),
                suite.key,
                "PAGE_TOKEN_INVALID",
            ),
            (
                job_service_pb2.ListJobResultsRequest(job_id=job_id, page_token=first.next_page_token),
                admin,
                "PAGE_TOKEN_INVALID",
            ),
            (
                job_service_pb2.ListJobResultsRequest(job_id=job_id, page_token="bm90IG91cnM="),
                suite.key,
                "PAGE_TOKEN_INVALID",
            ),
            (
                job_service_pb2.ListJobResultsRequest(job_id=job_id, page_size=-1),
                suite.key,
                "REQUEST_INVALID",
            ),
        ):
            code, reason, fields = await refusal(jobs.ListJobResults(request, metadata=bearer(key)))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and reason == expected, (code, reason)
            assert fields == (["page_token"] if expected == "PAGE_TOKEN_INVALID" else ["page_size"])
        code, _, _ = await refusal(
            jobs.ListJobResults(job_service_pb2.ListJobResultsRequest(job_id=job_id), metadata=bearer(bob))
        )
        assert code == grpc.StatusCode.NOT_FOUND
        # The tenant's admin reads them with its own tokens.
        assert await _pages(jobs, admin, job_id, 4) == [[0, 1, 2, 3], [4, 5, 6]]


async def test_a_running_job_s_results_continue_from_the_last_token(suite: Suite) -> None:
    runner = suite.runner(free_items=2)
    runner.gate.clear()
    async with suite.gateway(runner, gateway_job_item_concurrency=1) as jobs:
        job_id = (
            await jobs.SubmitJob(batch_request(_key(), ["a", "b", "c", "d"]), metadata=bearer(suite.key))
        ).job.job_id
        await watch_until(jobs, suite.key, job_id, succeeded_at_least(2))
        so_far = await jobs.ListJobResults(
            job_service_pb2.ListJobResultsRequest(job_id=job_id, page_size=2), metadata=bearer(suite.key)
        )
        assert [r.index for r in so_far.results] == [0, 1]
        # Nothing more has finished, but the job runs: the caller keeps a token to read on from there later.
        nothing_yet = await jobs.ListJobResults(
            job_service_pb2.ListJobResultsRequest(job_id=job_id, page_token=so_far.next_page_token),
            metadata=bearer(suite.key),
        )
        assert list(nothing_yet.results) == [] and nothing_yet.next_page_token
        runner.gate.set()
        await watch_until(jobs, suite.key, job_id, ended)
        rest = await jobs.ListJobResults(
            job_service_pb2.ListJobResultsRequest(job_id=job_id, page_token=nothing_yet.next_page_token),
            metadata=bearer(suite.key),
        )
    assert [r.index for r in rest.results] == [2, 3] and rest.next_page_token == ""


async def test_the_full_view_refuses_results_too_large_for_one_message(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with suite.gateway(suite.runner()) as jobs:
        job_id = await _finished_job(jobs, suite.key, ["a", "b", "c"])
        assert len((await _full_job(jobs, suite.key, job_id)).results) == 3
        # The limit stands for gRPC's 4 MiB; lowered here so that three small answers exceed it.
        monkeypatch.setattr(job_servicer, "FULL_VIEW_MAX_BYTES", 40)
        code, reason, _ = await refusal(
            jobs.GetJob(
                job_service_pb2.GetJobRequest(job_id=job_id, view=job_pb2.JOB_VIEW_FULL),
                metadata=bearer(suite.key),
            )
        )
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "JOB_RESULTS_TOO_LARGE")
        basic = await jobs.GetJob(job_service_pb2.GetJobRequest(job_id=job_id), metadata=bearer(suite.key))
        assert basic.job.progress.succeeded_items == 3  # the basic view and the pages still answer
        assert await _pages(jobs, suite.key, job_id, 2) == [[0], [1], [2]]  # one result per page fits


async def test_a_finished_job_is_deleted_with_its_results_and_its_key_may_be_used_again(suite: Suite) -> None:
    runner = suite.runner(free_items=0)
    runner.gate.clear()
    async with suite.gateway(runner) as jobs:
        key = _key()
        job_id = (await jobs.SubmitJob(batch_request(key, ["a", "b"]), metadata=bearer(suite.key))).job.job_id
        await timeouts.within(10, runner.started.wait())
        delete = job_service_pb2.DeleteJobRequest(job_id=job_id)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await jobs.DeleteJob(delete, metadata=bearer(suite.key))
        details = error_details(raised.value)
        assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "JOB_NOT_FINISHED")
        assert details.error_info is not None and details.error_info.metadata["state"] == "running"
        runner.gate.set()
        done = await watch_until(jobs, suite.key, job_id, ended)
        assert done.expire_time.ToDatetime() - done.end_time.ToDatetime() == datetime.timedelta(days=30)
        assert await _stored(suite.database_url, job_id) == (1, 2)

        # Another member cannot delete it (nor learn that it exists); the submitter can.
        _bob_id, bob = await suite.new_member("bob")
        code, _, _ = await refusal(jobs.DeleteJob(delete, metadata=bearer(bob)))
        assert code == grpc.StatusCode.NOT_FOUND
        assert (await jobs.DeleteJob(delete, metadata=bearer(suite.key))).deleted
        assert await _stored(suite.database_url, job_id) == (0, 0)
        for call in (
            jobs.GetJob(job_service_pb2.GetJobRequest(job_id=job_id), metadata=bearer(suite.key)),
            jobs.ListJobResults(
                job_service_pb2.ListJobResultsRequest(job_id=job_id), metadata=bearer(suite.key)
            ),
            jobs.DeleteJob(delete, metadata=bearer(suite.key)),
        ):
            code, _, _ = await refusal(call)
            assert code == grpc.StatusCode.NOT_FOUND
        missing = job_service_pb2.DeleteJobRequest(job_id=job_id, allow_missing=True)
        assert not (await jobs.DeleteJob(missing, metadata=bearer(suite.key))).deleted

        # The key is free again: the same submission is a new job.
        again = await jobs.SubmitJob(batch_request(key, ["a", "b"]), metadata=bearer(suite.key))
        assert again.job.job_id != job_id
        await watch_until(jobs, suite.key, again.job.job_id, ended)
        # A tenant admin may delete a member's job.
        _admin_id, admin = await suite.new_member("root", roles=("admin",))
        deleted = await jobs.DeleteJob(
            job_service_pb2.DeleteJobRequest(job_id=again.job.job_id), metadata=bearer(admin)
        )
        assert deleted.deleted


async def test_a_cancelled_job_deleted_while_its_last_item_runs_leaves_nothing_behind(suite: Suite) -> None:
    """Cancelling lets running items finish; deleting the cancelled job meanwhile drops their results too,
    and the worker moves on to the next job instead of failing and retrying this one."""
    runner = suite.runner(free_items=1)
    runner.gate.clear()
    async with suite.gateway(runner, gateway_job_item_concurrency=1) as jobs:
        job_id = (
            await jobs.SubmitJob(batch_request(_key(), ["a", "b", "c"]), metadata=bearer(suite.key))
        ).job.job_id
        await watch_until(jobs, suite.key, job_id, succeeded_at_least(1))
        cancelled = await jobs.CancelJob(
            job_service_pb2.CancelJobRequest(job_id=job_id), metadata=bearer(suite.key)
        )
        assert cancelled.job.expire_time.ToDatetime() - cancelled.job.end_time.ToDatetime() == (
            datetime.timedelta(days=30)
        )
        assert (
            await jobs.DeleteJob(job_service_pb2.DeleteJobRequest(job_id=job_id), metadata=bearer(suite.key))
        ).deleted
        runner.gate.set()  # item 1 finishes now, after its job is gone
        after = await _finished_job(jobs, suite.key, ["next"])
        assert after != job_id
        for _ in range(20):
            if await _stored(suite.database_url, job_id) == (0, 0):
                break
            await asyncio.sleep(0.1)
    assert await _stored(suite.database_url, job_id) == (0, 0)
    assert runner.calls == {0: 2, 1: 1}  # item 0 of each job, item 1 of the deleted one (once)


async def test_jobs_past_their_expire_time_are_deleted_even_by_a_replica_without_workers(
    suite: Suite,
) -> None:
    async with suite.gateway(suite.runner()) as jobs:
        expiring = await _finished_job(jobs, suite.key, ["a", "b"])
        kept = await _finished_job(jobs, suite.key, ["c"])
    await _expire_now(suite.database_url, expiring)
    # A replica that runs no workers still deletes expired jobs.
    async with suite.gateway(suite.runner(), gateway_job_workers_enabled=False) as jobs:
        for _ in range(50):
            if await _stored(suite.database_url, expiring) == (0, 0):
                break
            await asyncio.sleep(0.1)
        assert await _stored(suite.database_url, expiring) == (0, 0)
        code, _, _ = await refusal(
            jobs.GetJob(job_service_pb2.GetJobRequest(job_id=expiring), metadata=bearer(suite.key))
        )
        assert code == grpc.StatusCode.NOT_FOUND
        still = await jobs.GetJob(job_service_pb2.GetJobRequest(job_id=kept), metadata=bearer(suite.key))
        assert still.job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert await _stored(suite.database_url, kept) == (1, 1)


async def _listed(
    jobs: job_service_pb2_grpc.JobServiceStub, key: str, request: job_service_pb2.ListJobsRequest
) -> list[list[str]]:
    pages = []
    while True:
        reply = await jobs.ListJobs(request, metadata=bearer(key))
        pages.append([job.job_id for job in reply.jobs])
        if not reply.next_page_token:
            return pages
        request.page_token = reply.next_page_token


async def test_jobs_are_listed_newest_first_for_their_submitter_and_for_admins(suite: Suite) -> None:
    async with suite.gateway(suite.runner(), gateway_job_workers_enabled=False) as jobs:
        mine = [
            (await jobs.SubmitJob(batch_request(_key(), [q]), metadata=bearer(suite.key))).job.job_id
            for q in ("a", "b", "c")
        ]
        _bob_id, bob = await suite.new_member("bob")
        bobs = (await jobs.SubmitJob(batch_request(_key(), ["d"]), metadata=bearer(bob))).job.job_id
        await jobs.CancelJob(job_service_pb2.CancelJobRequest(job_id=mine[1]), metadata=bearer(suite.key))
        newest_first = mine[::-1]

        assert await _listed(jobs, suite.key, job_service_pb2.ListJobsRequest(page_size=2)) == [
            newest_first[:2],
            newest_first[2:],
        ]
        assert await _listed(jobs, bob, job_service_pb2.ListJobsRequest()) == [[bobs]]
        queued = job_service_pb2.ListJobsRequest(states=[job_pb2.JOB_STATE_QUEUED])
        assert await _listed(jobs, suite.key, queued) == [[mine[2], mine[0]]]
        listed = await jobs.ListJobs(job_service_pb2.ListJobsRequest(page_size=1), metadata=bearer(suite.key))
        assert listed.jobs[0].state == job_pb2.JOB_STATE_QUEUED and not listed.jobs[0].results

        _admin_id, admin = await suite.new_member("root", roles=("admin",))
        everyone = job_service_pb2.ListJobsRequest(all_users=True, page_size=3)
        assert await _listed(jobs, admin, everyone) == [[bobs, *newest_first[:2]], newest_first[2:]]
        alices = job_service_pb2.ListJobsRequest(user_id="alice")
        assert await _listed(jobs, admin, alices) == [newest_first]

        # Others' jobs need admin; filters are checked; a token is valid only with the filters it came with.
        for request in (
            job_service_pb2.ListJobsRequest(user_id="alice"),
            job_service_pb2.ListJobsRequest(all_users=True),
        ):
            code, reason, _ = await refusal(jobs.ListJobs(request, metadata=bearer(bob)))
            assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_MISSING")
        for request, field in (
            (job_service_pb2.ListJobsRequest(user_id="alice", all_users=True), "user_id"),
            (job_service_pb2.ListJobsRequest(states=[99]), "states[0]"),  # type: ignore[list-item]  # the kit
            (job_service_pb2.ListJobsRequest(states=[job_pb2.JOB_STATE_UNSPECIFIED]), "states[0]"),
            (job_service_pb2.ListJobsRequest(page_size=-5), "page_size"),
        ):
            code, _, fields = await refusal(jobs.ListJobs(request, metadata=bearer(admin)))
            assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])
        first = await jobs.ListJobs(job_service_pb2.ListJobsRequest(page_size=1), metadata=bearer(suite.key))
        code, reason, _ = await refusal(
            jobs.ListJobs(
                job_service_pb2.ListJobsRequest(
                    page_size=1, page_token=first.next_page_token, states=[job_pb2.JOB_STATE_QUEUED]
                ),
                metadata=bearer(suite.key),
            )
        )
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID")


class _HoldFirstItem(Runner):
    """Runs every item at once but item 0, which waits for ``gate``."""

    async def __call__(
        self, caller: Caller, request: chat_service_pb2.ChatRequest, request_id: str
    ) -> chat_service_pb2.ChatResponse:
        if request_id.endswith("-0"):
            await self.gate.wait()
        return await super().__call__(caller, request, request_id)


async def test_results_that_finish_out_of_order_are_all_read_with_the_running_job_s_tokens(
    suite: Suite,
) -> None:
    """Items run several at a time and finish in any order: a page of a running job stops at the first item
    not finished, so its token still leads to it."""
    runner = _HoldFirstItem(suite.auth.target)
    runner.gate.clear()
    async with suite.gateway(runner, gateway_job_item_concurrency=3) as jobs:
        job_id = (
            await jobs.SubmitJob(batch_request(_key(), ["a", "b", "c", "d"]), metadata=bearer(suite.key))
        ).job.job_id
        await watch_until(jobs, suite.key, job_id, succeeded_at_least(2))  # items 1 and 2 (and maybe 3)
        early = await jobs.ListJobResults(
            job_service_pb2.ListJobResultsRequest(job_id=job_id), metadata=bearer(suite.key)
        )
        assert list(early.results) == [] and early.next_page_token  # item 0 has not finished
        runner.gate.set()
        await watch_until(jobs, suite.key, job_id, ended)
        rest = await jobs.ListJobResults(
            job_service_pb2.ListJobResultsRequest(job_id=job_id, page_token=early.next_page_token),
            metadata=bearer(suite.key),
        )
    assert [r.index for r in rest.results] == [0, 1, 2, 3] and rest.next_page_token == ""


async def test_a_page_of_results_stays_within_one_message(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with suite.gateway(suite.runner()) as jobs:
        job_id = await _finished_job(jobs, suite.key, [f"question {i}" for i in range(5)])
        # The budget stands for gRPC's 4 MiB; lowered so that two of these small results fill a page.
        sizes = [
            r.response.ByteSize() + RESULT_FRAMING_BYTES
            for r in (await _full_job(jobs, suite.key, job_id)).results
        ]
        assert max(sizes) * 2 < min(sizes) * 3  # alike enough for "two per page" to hold for every pair
        monkeypatch.setattr(job_servicer, "FULL_VIEW_MAX_BYTES", max(sizes) * 2)
        assert await _pages(jobs, suite.key, job_id, 1000) == [[0, 1], [2, 3], [4]]
        # A single result larger than the budget still comes, alone: a page is never empty while results remain.
        monkeypatch.setattr(job_servicer, "FULL_VIEW_MAX_BYTES", 10)
        assert await _pages(jobs, suite.key, job_id, 1000) == [[0], [1], [2], [3], [4]]


async def test_a_watch_of_a_job_gone_before_its_next_read_ends_with_not_found(suite: Suite) -> None:
    """A watcher that next reads a job after it was cancelled and deleted (a slow loop, or a missed
    notification) must end, not poll a job that no longer exists for ever. The row is deleted here directly,
    without a notification, so the watcher meets it only at its next poll."""
    runner = suite.runner(free_items=0)
    runner.gate.clear()
    async with suite.gateway(runner, gateway_job_watch_poll_seconds=0.2) as jobs:
        job_id = (await jobs.SubmitJob(batch_request(_key(), ["a"]), metadata=bearer(suite.key))).job.job_id
        await timeouts.within(10, runner.started.wait())
        watch = jobs.WatchJob(job_service_pb2.WatchJobRequest(job_id=job_id), metadata=bearer(suite.key))
        first = await timeouts.within(5, watch.read())
        assert first.job.state == job_pb2.JOB_STATE_RUNNING
        database = Database(suite.database_url, "gateway", pool_size=1, max_overflow=0)
        try:
            async with database.transaction() as session:
                await session.execute(text("DELETE FROM jobs WHERE job_id::text = :j"), {"j": job_id})
        finally:
            await database.close()
        with pytest.raises(grpc.aio.AioRpcError) as ended_with:
            update = await timeouts.within(10, watch.read())
            raise AssertionError(f"the watch went on: {update}")
        assert ended_with.value.code() == grpc.StatusCode.NOT_FOUND
        runner.gate.set()


async def _reading_results_waits(database: Database) -> bool:
    async with database.transaction() as session:
        found = await session.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%FROM job_results%'"
            )
        )
        return bool(found.scalar())


@pytest.mark.parametrize("read", ["full view", "page"])
async def test_results_of_a_job_deleted_while_they_are_read_are_not_found_not_empty(
    suite: Suite, read: str
) -> None:
    """DeleteJob (or the expiry) commits after GetJob or ListJobResults found the job, before they read its
    results (staged with a lock on job_results the test holds while it deletes). The full view answered the
    job SUCCEEDED, 2 of 2 items answered, with no result; the page answered no result and no token, as a job
    whose results were all read: a reader took an empty job for a finished read. NOT_FOUND now, as a moment
    later."""
    database = Database(suite.database_url, "gateway", pool_size=2, max_overflow=0)
    try:
        async with suite.gateway(suite.runner()) as jobs:
            job_id = await _finished_job(jobs, suite.key, ["a", "b"])
            async with database.transaction() as session:
                await session.execute(text("LOCK TABLE job_results IN ACCESS EXCLUSIVE MODE"))
                if read == "full view":
                    request = job_service_pb2.GetJobRequest(job_id=job_id, view=job_pb2.JOB_VIEW_FULL)
                    reading = asyncio.ensure_future(jobs.GetJob(request, metadata=bearer(suite.key)))
                else:
                    page = job_service_pb2.ListJobResultsRequest(job_id=job_id)
                    reading = asyncio.ensure_future(jobs.ListJobResults(page, metadata=bearer(suite.key)))
                deadline = asyncio.get_running_loop().time() + 10
                while not await _reading_results_waits(database):
                    assert asyncio.get_running_loop().time() < deadline, "the read never reached the results"
                    await asyncio.sleep(0.02)
                await session.execute(text("DELETE FROM jobs WHERE job_id = CAST(:j AS uuid)"), {"j": job_id})
            code, _, _ = await refusal(reading)
            assert code == grpc.StatusCode.NOT_FOUND
    finally:
        await database.close()
