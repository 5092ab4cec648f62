"""Async jobs end to end: real auth (delegation), PostgreSQL, NATS JetStream and gRPC channels."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import grpc.aio
import jwt
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from parapet.auth.v1 import tenant_admin_service_pb2
from parapet.embedded.ports import free_port
from parapet.gateway.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from parapet.kit import timeouts
from parapet.kit.database import Database
from parapet.kit.errors import error_details
from parapet.kit.testing import refusal
from services.gateway.jobs.store import JobStore
from tests.integration.gateway_jobs.conftest import (
    TERMINAL,
    Suite,
    batch_request,
    bearer,
    ended,
    succeeded_at_least,
    watch_until,
)


def _key() -> str:
    return f"job-{uuid.uuid4().hex}"


async def _full_job(jobs: job_service_pb2_grpc.JobServiceStub, key: str, job_id: str) -> job_pb2.Job:
    request = job_service_pb2.GetJobRequest(job_id=job_id, view=job_pb2.JOB_VIEW_FULL)
    response: job_service_pb2.GetJobResponse = await jobs.GetJob(request, metadata=bearer(key))
    return response.job


async def _lease(database_url: str, job_id: str) -> tuple[int, int, str | None]:
    """(runs, attempts, worker) of ``job_id`` as PostgreSQL holds them, read past row-level security."""
    database = Database(database_url, "gateway", pool_size=1, max_overflow=0)
    try:
        async with database.transaction() as session:
            found = await session.execute(
                text("SELECT runs, attempts, worker FROM jobs WHERE job_id::text = :j"), {"j": job_id}
            )
            runs, attempts, worker = found.one()
            return int(runs), int(attempts), worker
    finally:
        await database.close()


async def _given_back(database_url: str, job_id: str, runs: int) -> tuple[int, int, str | None]:
    """(runs, attempts, worker) once the job was claimed ``runs`` times and no worker holds it."""
    while True:
        lease = await _lease(database_url, job_id)
        if lease[0] >= runs and lease[2] is None:
            return lease
        await asyncio.sleep(0.2)


async def test_a_job_runs_every_item_for_its_submitter_and_watch_shows_progress(suite: Suite) -> None:
    runner = suite.runner()
    questions = [f"q{i}" for i in range(6)]
    async with suite.gateway(runner) as jobs:
        submitted = await jobs.SubmitJob(
            batch_request(_key(), questions, batch="nightly"), metadata=bearer(suite.key)
        )
        job_id = submitted.job.job_id
        assert submitted.job.state == job_pb2.JOB_STATE_QUEUED and submitted.job.progress.total_items == 6
        seen = []
        async for message in jobs.WatchJob(
            job_service_pb2.WatchJobRequest(job_id=job_id), metadata=bearer(suite.key)
        ):
            seen.append(message.job)
        # The stream started with the state of the moment, showed progress, and ended after the terminal state.
        assert seen[-1].state == job_pb2.JOB_STATE_SUCCEEDED and len(seen) >= 2
        done = [j.progress.succeeded_items for j in seen]
        assert done == sorted(done) and done[-1] == 6
        assert all(j.state not in TERMINAL for j in seen[:-1])

        job = await _full_job(jobs, suite.key, job_id)
    assert [r.index for r in job.results] == list(range(6))
    assert [r.response.text for r in job.results] == [f"answer to {q}" for q in questions]
    assert job.usage.prompt_tokens == 18 and job.usage.completion_tokens == 30
    assert (job.cost.currency_code, job.cost.amount_micros) == ("USD", 60)
    assert job.metadata == {"batch": "nightly"} and job.HasField("start_time") and job.HasField("end_time")
    assert runner.calls == {i: 1 for i in range(6)}
    # Every item ran as the submitter, with a token auth issued to the gateway's account for them.
    for caller in runner.callers:
        assert (caller.tenant_id, caller.principal.subject, caller.principal.api_key_id) == (
            suite.tenant,
            "alice",
            suite.key_id,
        )
        claims = jwt.decode(caller.token, options={"verify_signature": False})
        assert claims["act"]["sub"].startswith("gw-")


async def test_submission_is_idempotent_and_bad_jobs_are_refused(suite: Suite) -> None:
    async with suite.gateway(suite.runner(), gateway_job_workers_enabled=False) as jobs:
        key = _key()
        first = await jobs.SubmitJob(batch_request(key, ["a", "b"]), metadata=bearer(suite.key))
        again = await jobs.SubmitJob(batch_request(key, ["a", "b"]), metadata=bearer(suite.key))
        assert again.job.job_id == first.job.job_id
        code, reason, _ = await refusal(
            jobs.SubmitJob(batch_request(key, ["a", "c"]), metadata=bearer(suite.key))
        )
        assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
        # Another user of the tenant picking the same key does not get alice's job.
        _bob_id, bob = await suite.new_member("bob")
        code, reason, _ = await refusal(jobs.SubmitJob(batch_request(key, ["a", "b"]), metadata=bearer(bob)))
        assert reason == "IDEMPOTENCY_KEY_REUSED"

        too_many = batch_request(_key(), ["x"] * 10_001)
        code, reason, fields = await refusal(jobs.SubmitJob(too_many, metadata=bearer(suite.key)))
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["chat_batch.requests"])
        labels = {f"k{i}": "v" for i in range(17)}
        code, _, fields = await refusal(
            jobs.SubmitJob(batch_request(_key(), ["x"], **labels), metadata=bearer(suite.key))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "metadata" in fields
        code, _, fields = await refusal(
            jobs.SubmitJob(job_service_pb2.SubmitJobRequest(idempotency_key=""), metadata=bearer(suite.key))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and set(fields) == {"idempotency_key", "chat_batch"}
        code, reason, _ = await refusal(jobs.SubmitJob(batch_request(_key(), ["x"])))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        # A user whose roles do not grant chat cannot submit.
        _id, reader = await suite.new_member("reader", roles=())
        code, reason, _ = await refusal(jobs.SubmitJob(batch_request(_key(), ["x"]), metadata=bearer(reader)))
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_MISSING")


async def test_only_the_submitter_and_tenant_admins_see_a_job(suite: Suite) -> None:
    async with suite.gateway(suite.runner(), gateway_job_workers_enabled=False) as jobs:
        job_id = (await jobs.SubmitJob(batch_request(_key(), ["a"]), metadata=bearer(suite.key))).job.job_id
        get = job_service_pb2.GetJobRequest(job_id=job_id)
        _bob_id, bob = await suite.new_member("bob")
        _admin_id, admin = await suite.new_member("root", roles=("admin",))
        other_tenant = Suite(suite.auth, suite.database_url, suite.nats_url, suite.service_key_file)
        other_tenant.tenant = await suite.auth.new_tenant("other")
        await suite.auth.new_user(other_tenant.tenant, "eve", roles=("admin",))
        _eve_id, eve = await suite.auth.new_key(other_tenant.tenant, "eve")

        for stranger in (bob, eve):
            for call in (
                jobs.GetJob(get, metadata=bearer(stranger)),
                jobs.CancelJob(job_service_pb2.CancelJobRequest(job_id=job_id), metadata=bearer(stranger)),
            ):
                code, _, _ = await refusal(call)
                assert code == grpc.StatusCode.NOT_FOUND
            stream = jobs.WatchJob(job_service_pb2.WatchJobRequest(job_id=job_id), metadata=bearer(stranger))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                async for _ in stream:
                    pass
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        assert (await jobs.GetJob(get, metadata=bearer(admin))).job.job_id == job_id
        code, _, _ = await refusal(
            jobs.GetJob(job_service_pb2.GetJobRequest(job_id="nope"), metadata=bearer(suite.key))
        )
        assert code == grpc.StatusCode.NOT_FOUND


async def test_cancel_stops_new_items_and_keeps_finished_ones(suite: Suite) -> None:
    runner = suite.runner(free_items=2)
    runner.gate.clear()
    async with suite.gateway(runner, gateway_job_item_concurrency=1) as jobs:
        job_id = (
            await jobs.SubmitJob(
                batch_request(_key(), [f"q{i}" for i in range(10)]), metadata=bearer(suite.key)
            )
        ).job.job_id

        # Two items finish, the third is held inside the runner.
        await watch_until(jobs, suite.key, job_id, succeeded_at_least(2))
        cancelled = await jobs.CancelJob(
            job_service_pb2.CancelJobRequest(job_id=job_id), metadata=bearer(suite.key)
        )
        assert cancelled.job.state == job_pb2.JOB_STATE_CANCELLED and cancelled.job.HasField("end_time")
        runner.gate.set()  # the running item finishes and is recorded; no other starts
        await asyncio.sleep(2.5)  # more than a lease renewal: the worker has heard of the cancel
        again = await jobs.CancelJob(
            job_service_pb2.CancelJobRequest(job_id=job_id), metadata=bearer(suite.key)
        )
        assert again.job.state == job_pb2.JOB_STATE_CANCELLED  # idempotent
        full = await _full_job(jobs, suite.key, job_id)
        watched = await watch_until(jobs, suite.key, job_id, ended)
    assert watched.state == job_pb2.JOB_STATE_CANCELLED
    assert full.progress.succeeded_items == len(full.results) == sum(runner.calls.values()) == 3
    assert max(runner.calls) == 2


async def test_a_cancel_while_the_worker_fetches_the_submitter_s_token_starts_no_item(suite: Suite) -> None:
    """After claiming a job the worker first asks auth for the submitter's token. A cancel during that round trip
    was heard only at the first checkpoint or lease renewal, after the first items (as many as the item
    concurrency) had started. Auth is held up for real: its API key table locked by a transaction of ours."""
    runner = suite.runner()
    # Renewals far apart, so that only the check after the token, not a renewal, can hear the cancel in time.
    async with suite.gateway(
        runner, gateway_job_item_concurrency=4, gateway_job_ack_wait_seconds=30.0
    ) as jobs:
        await jobs.ListJobs(
            job_service_pb2.ListJobsRequest(), metadata=bearer(suite.key)
        )  # auth knows the key
        holder = create_async_engine(suite.database_url)
        try:
            async with holder.connect() as connection:
                locked = await connection.begin()
                await connection.execute(text("LOCK TABLE auth.api_keys IN ACCESS EXCLUSIVE MODE"))
                submitted = await jobs.SubmitJob(
                    batch_request(_key(), [f"q{i}" for i in range(4)]), metadata=bearer(suite.key)
                )
                job_id = submitted.job.job_id
                await watch_until(jobs, suite.key, job_id, lambda job: job.state == job_pb2.JOB_STATE_RUNNING)
                await asyncio.sleep(0.3)  # the worker is waiting for auth, which waits for our lock
                cancelled = await jobs.CancelJob(
                    job_service_pb2.CancelJobRequest(job_id=job_id), metadata=bearer(suite.key)
                )
                assert cancelled.job.state == job_pb2.JOB_STATE_CANCELLED
                await locked.rollback()
        finally:
            await holder.dispose()
        await asyncio.sleep(1.0)  # the token arrives; an item, had one started, would have by now
        full = await _full_job(jobs, suite.key, job_id)
    assert full.state == job_pb2.JOB_STATE_CANCELLED and not full.results
    assert not runner.started.is_set() and sum(runner.calls.values()) == 0


async def test_a_stopped_worker_s_job_is_finished_by_another_without_rerunning_items(suite: Suite) -> None:
    first = suite.runner(free_items=4)
    first.gate.clear()  # the fifth item hangs in the first worker
    questions = [f"q{i}" for i in range(12)]
    async with suite.gateway(first, gateway_job_item_concurrency=1) as jobs:
        job_id = (
            await jobs.SubmitJob(batch_request(_key(), questions), metadata=bearer(suite.key))
        ).job.job_id

        await watch_until(jobs, suite.key, job_id, succeeded_at_least(4))
    # The first gateway stopped mid-item (its worker task cancelled). A second one takes the job over.
    second = suite.runner()
    async with suite.gateway(second) as jobs:
        done = await watch_until(jobs, suite.key, job_id, ended)
        full = await _full_job(jobs, suite.key, job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED and done.progress.succeeded_items == 12
    assert [r.index for r in full.results] == list(range(12))
    assert set(first.calls) == {0, 1, 2, 3} and all(n == 1 for n in first.calls.values())
    assert set(second.calls) == set(range(4, 12)) and all(n == 1 for n in second.calls.values())


async def test_an_item_run_again_is_a_request_of_its_own_each_time(suite: Suite) -> None:
    """An item a stopping worker cancels runs again on the next one. Under its first run's request id, metering
    would take the rerun for a retry of the first run (its reservation back without a budget check, the
    settlement refused): each run of the job gives its items ids of their own, the first run's `job-<id>-<index>`,
    and never one used before, also after give-backs (two here). The result kept is the run that finished."""
    stopped = [suite.runner(free_items=1), suite.runner(free_items=0)]
    for runner in stopped:
        runner.gate.clear()  # item 1 hangs in both: each worker is stopped inside it
    async with suite.gateway(stopped[0], gateway_job_item_concurrency=1) as jobs:
        job_id = (
            await jobs.SubmitJob(batch_request(_key(), ["a", "b", "c"]), metadata=bearer(suite.key))
        ).job.job_id
        await timeouts.within(30, stopped[0].held.wait())
    async with suite.gateway(stopped[1], gateway_job_item_concurrency=1):
        await timeouts.within(30, stopped[1].held.wait())
    last = suite.runner()
    async with suite.gateway(last, gateway_job_item_concurrency=1) as jobs:
        done = await watch_until(jobs, suite.key, job_id, ended)
        full = await _full_job(jobs, suite.key, job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED and done.progress.succeeded_items == 3
    assert stopped[0].request_ids == [f"job-{job_id}-0", f"job-{job_id}-1"]
    assert stopped[1].request_ids == [f"job-{job_id}-1-run2"]
    assert last.request_ids == [f"job-{job_id}-1-run3", f"job-{job_id}-2-run3"]
    assert [r.index for r in full.results] == [0, 1, 2]
    assert [r.response.summary.request_id for r in full.results] == [
        f"job-{job_id}-0",
        f"job-{job_id}-1-run3",
        f"job-{job_id}-2-run3",
    ]


async def test_a_job_given_back_while_auth_is_unreachable_does_not_use_up_its_attempts(suite: Suite) -> None:
    """Auth unreachable: the worker cannot get the submitter's token and gives the job back for later. Given
    back more often than ``gateway_job_max_attempts`` allows, the job still runs once auth answers (the code
    that counted every claim failed it JOB_ATTEMPTS_EXHAUSTED at its second)."""
    runner = suite.runner()
    async with suite.gateway(runner, gateway_job_workers_enabled=False) as jobs:
        job_id = (
            await jobs.SubmitJob(batch_request(_key(), ["a", "b"]), metadata=bearer(suite.key))
        ).job.job_id
        async with suite.gateway(runner, auth_address=f"127.0.0.1:{free_port()}", gateway_job_max_attempts=1):
            # Two claims (5 s apart), both given back: no attempt is left counted.
            runs, attempts, _worker = await timeouts.within(30, _given_back(suite.database_url, job_id, 2))
        assert runs >= 2 and attempts == 0
        async with suite.gateway(runner, gateway_job_max_attempts=1):
            done = await watch_until(jobs, suite.key, job_id, ended)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    assert runner.calls == {0: 1, 1: 1}
    last_run, _attempts, _worker = await _lease(suite.database_url, job_id)
    assert last_run > runs
    assert sorted(runner.request_ids) == [f"job-{job_id}-{i}-run{last_run}" for i in (0, 1)]


async def test_a_job_auth_keeps_failing_for_another_reason_than_an_outage_uses_up_its_attempts(
    suite: Suite,
) -> None:
    """Only auth being unreachable is a free give-back: an error auth answers (here UNIMPLEMENTED, from a gRPC
    server that serves no AuthService) may repeat for ever, so each counts, and the limit ends the job."""
    runner = suite.runner()
    not_auth = grpc.aio.server()
    port = not_auth.add_insecure_port("127.0.0.1:0")
    await not_auth.start()
    try:
        async with suite.gateway(runner, gateway_job_workers_enabled=False) as jobs:
            job_id = (
                await jobs.SubmitJob(batch_request(_key(), ["a"]), metadata=bearer(suite.key))
            ).job.job_id
            async with suite.gateway(runner, auth_address=f"127.0.0.1:{port}", gateway_job_max_attempts=1):
                failed = await timeouts.within(30, watch_until(jobs, suite.key, job_id, ended))
    finally:
        await not_auth.stop(None)
    assert failed.state == job_pb2.JOB_STATE_FAILED
    assert failed.error.message == "the job did not finish in 1 attempt"
    assert runner.calls.total() == 0


async def test_a_job_past_its_attempts_fails_with_the_reason_and_keeps_its_finished_items(
    suite: Suite,
) -> None:
    """A job that never finishes (say, one that kills every worker that takes it) must not circulate for
    ever: the delivery past ``gateway_job_max_attempts`` fails it instead of running it again. A worker that
    dies holding the lease counts an attempt; one that stops and gives the job back does not (the message says
    1 attempt: on the code that counted every claim it said 2)."""
    first = suite.runner(free_items=2)
    first.gate.clear()  # the third item hangs: the first worker stops inside it and gives the job back
    async with suite.gateway(first, gateway_job_item_concurrency=1) as jobs:
        job_id = (
            await jobs.SubmitJob(batch_request(_key(), ["a", "b", "c", "d"]), metadata=bearer(suite.key))
        ).job.job_id
        await watch_until(jobs, suite.key, job_id, succeeded_at_least(2))
    # A worker that claims the job and dies at once: the state it leaves is its claim, never renewed nor
    # released (the SIGKILLed process of the slow test below leaves the same).
    database = Database(suite.database_url, "gateway", pool_size=1, max_overflow=0)
    try:
        claim = await JobStore(database, retention_days=30).claim(suite.tenant, job_id, "dead-worker", 1.0)
    finally:
        await database.close()
    assert claim.granted and claim.job is not None and (claim.job.runs, claim.job.attempts) == (2, 1)
    second = suite.runner()
    async with suite.gateway(second, gateway_job_max_attempts=1) as jobs:
        failed = await watch_until(jobs, suite.key, job_id, ended)
        full = await _full_job(jobs, suite.key, job_id)
    assert failed.state == job_pb2.JOB_STATE_FAILED
    assert failed.error.code == grpc.StatusCode.INTERNAL.value[0]
    assert failed.error.message == "the job did not finish in 1 attempt"
    from google.rpc import error_details_pb2

    info = error_details_pb2.ErrorInfo()
    assert failed.error.details[0].Unpack(info) and info.reason == "JOB_ATTEMPTS_EXHAUSTED"
    assert second.calls.total() == 0  # the exhausted job ran nothing more
    assert [r.index for r in full.results] == [0, 1] and full.progress.succeeded_items == 2


async def test_a_claim_after_claims_by_the_earlier_release_never_reuses_a_run_number(suite: Suite) -> None:
    """During the rollout of ``0005_job_runs``, replicas of the earlier release claim jobs by counting attempts
    only (``runs`` stays where the migration left it). A new replica's claim then numbers its run past every
    earlier claim, so its items never repeat a request id metering has seen (it would take the rerun for a retry
    of the first run and never bill it)."""
    async with suite.gateway(suite.runner(), gateway_job_workers_enabled=False) as jobs:
        job_id = (await jobs.SubmitJob(batch_request(_key(), ["a"]), metadata=bearer(suite.key))).job.job_id
    database = Database(suite.database_url, "gateway", pool_size=1, max_overflow=0)
    try:
        store = JobStore(database, retention_days=30)
        async with store.tenant(suite.tenant) as session:  # two claims by earlier-release workers
            await session.execute(
                text("UPDATE jobs SET attempts = 2 WHERE job_id = CAST(:j AS uuid)"), {"j": job_id}
            )
        claim = await store.claim(suite.tenant, job_id, "new-worker", 5.0)
    finally:
        await database.close()
    assert claim.granted and claim.job is not None and (claim.job.runs, claim.job.attempts) == (3, 3)


async def test_queue_messages_that_name_no_job_are_dropped_and_jobs_behind_them_run(suite: Suite) -> None:
    """The queue is internal, but a message the workers cannot act on (garbage, an id that is no UUID, a job
    that does not exist) must leave the queue at once: JetStream never gives up on a message by itself, so
    one left unacknowledged would circulate for ever."""
    from nats.js.api import StreamInfo

    from parapet.kit.bus import Bus
    from services.gateway.jobs import queue

    bus = await Bus.connect(suite.nats_url, name="test-jobs-garbage")
    try:
        await bus.ensure_stream(queue.JOBS_STREAM)
        for body in (
            b"garbage",
            b"/",
            f"{suite.tenant}/not-a-uuid".encode(),
            f"{suite.tenant}/{uuid.uuid4()}".encode(),
        ):
            await bus.publish(queue.SUBJECT, body, msg_id=uuid.uuid4().hex)
        runner = suite.runner()
        async with suite.gateway(runner) as jobs:
            job_id = (
                await jobs.SubmitJob(batch_request(_key(), ["a"]), metadata=bearer(suite.key))
            ).job.job_id
            done = await watch_until(jobs, suite.key, job_id, ended)
            assert done.state == job_pb2.JOB_STATE_SUCCEEDED
            left: StreamInfo | None = None
            for _ in range(50):  # the job's own message is acknowledged after its state is committed
                left = await bus.jetstream.stream_info(queue.JOBS_STREAM.name)
                if left.state.messages == 0:
                    break
                await asyncio.sleep(0.1)
            assert left is not None and left.state.messages == 0, "a message stayed in the work queue"
    finally:
        await bus.close()


async def test_a_revoked_key_fails_its_queued_job_with_the_reason(suite: Suite) -> None:
    runner = suite.runner()
    async with suite.gateway(runner, gateway_job_workers_enabled=False) as jobs:
        job_id = (
            await jobs.SubmitJob(batch_request(_key(), ["a", "b"]), metadata=bearer(suite.key))
        ).job.job_id
    await suite.auth.admin.RevokeApiKey(
        tenant_admin_service_pb2.RevokeApiKeyRequest(
            tenant_id=suite.tenant, api_key_id=suite.key_id, reason="leaked"
        ),
        metadata=suite.auth.operator,
    )
    _id, admin = await suite.new_member("root", roles=("admin",))
    async with suite.gateway(runner) as jobs:
        failed = await watch_until(jobs, admin, job_id, ended)
    assert failed.state == job_pb2.JOB_STATE_FAILED
    assert failed.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "revoked" in failed.error.message
    from google.rpc import error_details_pb2

    info = error_details_pb2.ErrorInfo()
    assert failed.error.details[0].Unpack(info) and info.reason == "API_KEY_REVOKED"
    assert runner.calls.total() == 0  # no item ran


@pytest.mark.slow  # a second gateway process, started and SIGKILLed
async def test_a_killed_worker_s_job_is_redelivered_after_its_lease_and_resumed(suite: Suite) -> None:
    """SIGKILL, not a graceful stop: the dead worker gives nothing back; its lease expires, JetStream
    redelivers after ack_wait, and another worker runs only the items the dead one had not finished."""
    import sys
    from pathlib import Path

    async with suite.gateway(suite.runner(), gateway_job_workers_enabled=False) as jobs:
        job_id = (
            await jobs.SubmitJob(
                batch_request(_key(), [f"q{i}" for i in range(6)]), metadata=bearer(suite.key)
            )
        ).job.job_id
        settings = suite.settings(gateway_job_item_concurrency=1).model_dump_json()
        root = Path(__file__).parents[3]
        dying = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.integration.gateway_jobs.dying_gateway",
            settings,
            "3",
            suite.tenant,
            cwd=root,
            stdout=asyncio.subprocess.DEVNULL,
        )
        try:
            await watch_until(jobs, suite.key, job_id, succeeded_at_least(3), within=60)
        finally:
            dying.kill()
            await dying.wait()
        second = suite.runner()
        async with suite.gateway(second) as worker:
            done = await watch_until(worker, suite.key, job_id, ended, within=60)
        full = await _full_job(jobs, suite.key, job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    assert [r.index for r in full.results] == list(range(6))
    # The dead worker finished 0-2 and was killed inside item 3, which it never recorded: the second runs 3-5.
    assert second.calls == {3: 1, 4: 1, 5: 1}


async def test_each_hostile_field_of_a_job_request_gets_a_typed_answer(suite: Suite) -> None:
    """SubmitJob, GetJob, WatchJob and CancelJob with each field of an otherwise valid request made hostile in
    turn (tests/hostile.py): a typed status with ErrorInfo or an answer, never INTERNAL or UNKNOWN."""
    from tests.hostile import crash, hostile_requests

    crashed: list[str] = []

    async def check(what: str, call: object) -> None:
        try:
            result = call
            if hasattr(result, "__aiter__"):
                async for _ in result:
                    pass
            else:
                await result  # type: ignore[misc]
        except grpc.aio.AioRpcError as error:
            if (why := crash(error_details(error))) is not None:
                crashed.append(f"{what}: {why}")

    async with suite.gateway(suite.runner(), gateway_job_workers_enabled=False) as jobs:
        submitted = await jobs.SubmitJob(batch_request(_key(), ["a"]), metadata=bearer(suite.key))
        job_id = submitted.job.job_id
        base_submit = batch_request(_key(), ["a"], team="x")
        for what, request in hostile_requests(job_service_pb2.SubmitJobRequest, base_submit):
            await check(f"SubmitJob {what}", jobs.SubmitJob(request, metadata=bearer(suite.key), timeout=10))
        for name, request_type, method in (
            ("GetJob", job_service_pb2.GetJobRequest, jobs.GetJob),
            ("CancelJob", job_service_pb2.CancelJobRequest, jobs.CancelJob),
            ("WatchJob", job_service_pb2.WatchJobRequest, jobs.WatchJob),
        ):
            for what, request in hostile_requests(request_type, request_type(job_id=job_id)):
                await check(f"{name} {what}", method(request, metadata=bearer(suite.key), timeout=3))
        # An undeclared view is refused, not read as the basic one (never a silent default).
        code, _, fields = await refusal(
            jobs.GetJob(job_service_pb2.GetJobRequest(job_id=job_id, view=999), metadata=bearer(suite.key))  # type: ignore[arg-type]
        )
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["view"])
    assert crashed == []
