"""Jobs while PostgreSQL or NATS fail under a running job, and jobs queued twice. Every item that reaches the
model is billed: an item whose result cannot be recorded, or that two runs of its job start, is charged twice."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from parapet.gateway.v1 import job_pb2
from parapet.kit import timeouts
from parapet.kit.errors import Unavailable
from services.gateway.jobs.store import ItemOutcome, JobStore
from tests.integration.gateway_jobs.conftest import Runner, Suite, batch_request, bearer, ended, watch_until
from tests.integration.gateway_jobs.test_jobs import _full_job, _key


async def test_a_checkpoint_outage_stops_new_items_until_the_job_is_given_back(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database refuses every checkpoint until the worker gives the job back. The worker went on starting
    items, each run (and billed) and its result lost, through the whole batch before giving the job back, and
    the next run ran them all again: 12 runs of 6 items. Now the first failed checkpoint stops new items."""
    record, release = JobStore.record_item, JobStore.release
    down = [True]

    async def failing_record(self: JobStore, tenant_id: str, job_id: str, outcome: ItemOutcome) -> str:
        if down[0]:
            raise Unavailable("the gateway database is unavailable", retry_after=1.0)
        return await record(self, tenant_id, job_id, outcome)

    async def recovering_release(self: JobStore, *args: Any, **kwargs: Any) -> None:
        down[0] = False  # the outage ends as the job is given back
        await release(self, *args, **kwargs)

    monkeypatch.setattr(JobStore, "record_item", failing_record)
    monkeypatch.setattr(JobStore, "release", recovering_release)
    runner = suite.runner()
    async with suite.gateway(runner, gateway_job_item_concurrency=1) as jobs:
        job_id = (
            await jobs.SubmitJob(
                batch_request(_key(), [f"q{i}" for i in range(6)]), metadata=bearer(suite.key)
            )
        ).job.job_id
        done = await watch_until(jobs, suite.key, job_id, ended, within=60)
        full = await _full_job(jobs, suite.key, job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED and [r.index for r in full.results] == list(range(6))
    # Item 0 ran before the outage was known (its result lost, so it ran again); no other item ran twice.
    assert runner.calls[0] == 2 and all(runner.calls[i] == 1 for i in range(1, 6)), runner.calls


async def test_a_checkpoint_that_fails_for_a_moment_is_written_and_its_item_not_run_again(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database blip (two refused attempts) while an item's result is checkpointed: the result, already paid
    for, was dropped and the job given back, and the item ran (and was billed) a second time. Now the checkpoint
    is tried again for a while first."""
    record = JobStore.record_item
    failures = [2]

    async def blipping_record(self: JobStore, tenant_id: str, job_id: str, outcome: ItemOutcome) -> str:
        if failures[0] > 0:
            failures[0] -= 1
            raise Unavailable("the gateway database is unavailable", retry_after=1.0)
        return await record(self, tenant_id, job_id, outcome)

    monkeypatch.setattr(JobStore, "record_item", blipping_record)
    runner = suite.runner()
    async with suite.gateway(runner, gateway_job_item_concurrency=1) as jobs:
        job_id = (
            await jobs.SubmitJob(batch_request(_key(), ["a", "b", "c"]), metadata=bearer(suite.key))
        ).job.job_id
        done = await watch_until(jobs, suite.key, job_id, ended, within=60)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED and done.progress.succeeded_items == 3
    assert runner.calls == {0: 1, 1: 1, 2: 1}


class _SlowRunner(Runner):
    """Items that take half a second each, so that a job outlives the test's ack_wait (1.5 s)."""

    async def __call__(self, *args: Any) -> Any:
        await asyncio.sleep(0.5)
        return await super().__call__(*args)


async def test_a_job_whose_progress_cannot_reach_nats_keeps_its_lease(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NATS refuses the worker's progress reports (``in_progress``: a client whose outbound buffer filled during
    an outage). JetStream then redelivers the job after ack_wait, and only the lease in PostgreSQL stops a second
    run of it. The heartbeat renewed that lease only after a successful report, so the lease expired with the
    reports, the other gateway claimed the redelivered job, and items ran in both."""
    from nats.aio.msg import Msg
    from nats.errors import OutboundBufferLimitError

    async def refused(self: Msg) -> None:
        raise OutboundBufferLimitError

    monkeypatch.setattr(Msg, "in_progress", refused)
    first, second = (
        _SlowRunner(suite.auth.target, tenant=suite.tenant),
        _SlowRunner(suite.auth.target, tenant=suite.tenant),
    )
    one_at_a_time = {"gateway_job_item_concurrency": 1, "gateway_job_parallel_jobs": 1}
    async with suite.gateway(first, **one_at_a_time) as jobs:
        job_id = (
            await jobs.SubmitJob(
                batch_request(_key(), [f"q{i}" for i in range(10)]), metadata=bearer(suite.key)
            )
        ).job.job_id
        await timeouts.within(30, first.started.wait())
        async with suite.gateway(second, **one_at_a_time):  # the only free worker when JetStream redelivers
            done = await watch_until(jobs, suite.key, job_id, ended, within=60)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    assert first.calls == {i: 1 for i in range(10)} and not second.calls


async def test_a_job_queued_twice_runs_once_in_a_gateway_that_takes_both_messages(suite: Suite) -> None:
    """The sweeper queues a job again when it cannot tell whether the queue holds it (the submit's publish went
    through but marking it enqueued did not, a clock skew with a recreated stream): two messages for one job. A
    gateway with two job slots took both, and its second claim succeeded because the lease was its own, so the
    job ran twice at once in one process, every item run (and billed) twice."""
    from parapet.kit.bus import Bus
    from services.gateway.jobs import queue

    async with suite.gateway(suite.runner(), gateway_job_workers_enabled=False) as jobs:
        job_id = (
            await jobs.SubmitJob(
                batch_request(_key(), [f"q{i}" for i in range(6)]), metadata=bearer(suite.key)
            )
        ).job.job_id
    bus = await Bus.connect(suite.nats_url, name="test-jobs-duplicate")
    try:
        await queue.enqueue(bus, suite.tenant, job_id, msg_id=f"{job_id}:0")  # the sweeper's message id
    finally:
        await bus.close()
    runner = _SlowRunner(suite.auth.target, tenant=suite.tenant)
    async with suite.gateway(runner, gateway_job_item_concurrency=1, gateway_job_parallel_jobs=2) as jobs:
        done = await watch_until(jobs, suite.key, job_id, ended, within=60)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    assert runner.calls == {i: 1 for i in range(6)}
