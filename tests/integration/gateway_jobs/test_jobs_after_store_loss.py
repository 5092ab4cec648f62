"""Jobs after NATS lost its store (an emptyDir, a wiped volume): the JOBS work queue and the workers' durable
consumer are gone. Before, the gateway declared JOBS only at start, so a new job's message found no stream (the
sweeper's retries too), and the worker's subscription stayed bound to the lost durable, every fetch failing:
no job ran again until the gateway restarted."""

from __future__ import annotations

import asyncio
import shutil
import uuid

import nats

from parapet.embedded import EmbeddedNats
from parapet.gateway.v1 import job_pb2
from parapet.kit import timeouts
from services.gateway.jobs import queue
from tests.integration.gateway_jobs.conftest import Suite, batch_request, bearer, ended, watch_until


async def test_a_job_submitted_after_nats_lost_its_store_runs(suite: Suite, fresh_nats: EmbeddedNats) -> None:
    runner = suite.runner()
    async with suite.gateway(runner) as jobs:
        before = await jobs.SubmitJob(
            batch_request(f"job-{uuid.uuid4().hex}", ["q0"]), metadata=bearer(suite.key)
        )
        assert (await watch_until(jobs, suite.key, before.job.job_id, ended)).progress.succeeded_items == 1

        await asyncio.to_thread(fresh_nats.stop)
        await asyncio.to_thread(shutil.rmtree, fresh_nats.store_dir)
        await asyncio.to_thread(fresh_nats.start)

        after = await jobs.SubmitJob(
            batch_request(f"job-{uuid.uuid4().hex}", ["q1", "q2"]), metadata=bearer(suite.key)
        )
        job = await watch_until(jobs, suite.key, after.job.job_id, ended, within=60)
        assert job.progress.succeeded_items == 2, job
    # Each item ran once (the sweeper may also hand this gateway jobs earlier tests left behind: not counted).
    assert len([r for r in runner.request_ids if after.job.job_id in r]) == 2
    # The durable came back as the worker declares it: the lease as ack wait, JetStream never giving up.
    client = await nats.connect(fresh_nats.url)
    try:
        info = await client.jetstream().consumer_info(queue.JOBS_STREAM.name, queue.CONSUMER)
    finally:
        await client.close()
    assert (info.config.ack_wait, info.config.max_deliver, info.config.max_ack_pending) == (1.5, -1, 10_000)
    assert info.config.filter_subject == queue.SUBJECT


async def test_jobs_whose_message_was_lost_with_the_store_still_run(
    suite: Suite, fresh_nats: EmbeddedNats
) -> None:
    """A job accepted and queued (its message acknowledged by JetStream) before NATS lost its store: the message
    went with the stream. The sweeper queued again only jobs never acknowledged and running jobs with a long
    expired lease, so a queued job (and a running one given back, whose lease is cleared) waited for ever:
    accepted, then lost. Here one job is queued and another given back by a stopping gateway."""
    held = suite.runner(free_items=1)
    held.gate.clear()  # the given-back job's second item hangs until its gateway stops
    async with suite.gateway(held, gateway_job_item_concurrency=1) as jobs:
        given_back = await jobs.SubmitJob(
            batch_request(f"job-{uuid.uuid4().hex}", ["a", "b", "c"]), metadata=bearer(suite.key)
        )
        await timeouts.within(30, held.held.wait())
    async with suite.gateway(suite.runner(), gateway_job_workers_enabled=False) as jobs:
        queued = await jobs.SubmitJob(
            batch_request(f"job-{uuid.uuid4().hex}", ["q1", "q2"]), metadata=bearer(suite.key)
        )
    assert queued.job.state == job_pb2.JOB_STATE_QUEUED

    await asyncio.to_thread(fresh_nats.stop)
    await asyncio.to_thread(shutil.rmtree, fresh_nats.store_dir)
    await asyncio.to_thread(fresh_nats.start)

    runner = suite.runner()
    async with suite.gateway(runner) as jobs:
        for submitted, items in ((queued, 2), (given_back, 3)):
            job = await watch_until(jobs, suite.key, submitted.job.job_id, ended, within=60)
            assert job.state == job_pb2.JOB_STATE_SUCCEEDED and job.progress.succeeded_items == items, job
