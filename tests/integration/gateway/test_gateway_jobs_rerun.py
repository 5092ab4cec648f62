"""A job item run twice (its worker stopped inside it, another running it again) through the real governed
flow: each run is a request of its own at metering and audit, so both are billed and recorded, and the
ledger matches what the provider was asked for. The suite's own gateway runs no job items here; each test
starts the worker gateways it stops."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from parapet.gateway.v1 import job_pb2, job_service_pb2
from tests.integration.gateway.conftest import MODULE, Suite, Tenant, unary_question

pytestmark = MODULE


@pytest.fixture(scope="module")
def main_gateway_overrides() -> dict[str, Any]:
    return {"gateway_job_workers_enabled": False}


async def _asked(suite: Suite, text: str, times: int) -> None:
    """Until the provider has been asked ``text`` ``times`` times."""
    async with asyncio.timeout(60):
        while True:
            if sum(text in str(r.body) for r in suite.upstream.requests) >= times:
                return
            await asyncio.sleep(0.05)


# The slow model streams one word per 50 ms: 200 words take 10 s, and outlast a stopping worker's drain grace.
WORDS = " ".join(f"word{n}" for n in range(200))


async def _submit_slow_item(suite: Suite, tenant: Tenant, idempotency_key: str) -> str:
    """A job of one item the slow model answers with ``WORDS``; its id."""
    item = unary_question(WORDS, model="slow")
    submitted = await suite.jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(
            idempotency_key=idempotency_key, chat_batch=job_pb2.ChatBatch(requests=[item])
        ),
        metadata=tenant.metadata(),
    )
    return str(submitted.job.job_id)


async def test_an_item_run_again_after_its_worker_stopped_is_billed_and_audited_for_each_run(
    suite: Suite,
) -> None:
    tenant = await suite.tenant()
    job_id = await _submit_slow_item(suite, tenant, "rerun")
    async with suite.gateway(gateway_job_workers_enabled=True):
        await _asked(suite, WORDS, 1)
    # Stopped mid-answer: the first run is settled for what it used, and the job given back.
    async with suite.gateway(gateway_job_workers_enabled=True):
        job = await suite.finished_job(tenant, job_id, seconds=90)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.state
    answered = job.results[0].response
    assert answered.text == f"You said: {WORDS}"
    assert answered.summary.request_id == f"job-{job_id}-0-run2"
    assert sum(WORDS in str(r.body) for r in suite.upstream.requests) == 2

    ledger = await suite.wait_rows(
        "SELECT request_id, prompt_tokens, completion_tokens, cost_micros FROM metering.usage_ledger"
        " WHERE tenant_id = :t ORDER BY request_id",
        t=tenant.tenant_id,
        count=2,
    )
    assert [r.request_id for r in ledger] == [f"job-{job_id}-0", f"job-{job_id}-0-run2"]
    first, rerun = ledger
    # Both runs sent the whole prompt; the first was cut short, the rerun answered in full.
    assert first.prompt_tokens == rerun.prompt_tokens == answered.summary.usage.prompt_tokens
    assert 0 <= first.completion_tokens < rerun.completion_tokens == answered.summary.usage.completion_tokens
    assert first.cost_micros > 0 and rerun.cost_micros == answered.summary.cost.amount_micros
    # The job reports the run it kept; the tenant is billed for both.
    assert job.cost.amount_micros == rerun.cost_micros
    audited = await suite.wait_rows(
        "SELECT request_id FROM audit.records WHERE tenant_id = :t AND kind = 'interaction' ORDER BY request_id",
        t=tenant.tenant_id,
        count=2,
    )
    assert [r.request_id for r in audited] == [f"job-{job_id}-0", f"job-{job_id}-0-run2"]


async def test_an_item_past_its_time_limit_is_audited_and_released_as_a_deadline_not_a_cancellation(
    suite: Suite,
) -> None:
    """The worker stops an item at ``PARAPET_GATEWAY_JOB_ITEM_TIMEOUT_SECONDS``. The flow saw only a cancellation,
    so until 2026-12-06 the item's audit record said CANCELLED, as if its submitter had stopped it, while the
    job's result said DEADLINE_EXCEEDED; the item's calls to other services had no deadline either."""
    tenant = await suite.tenant()
    job_id = await _submit_slow_item(suite, tenant, "late")
    async with suite.gateway(gateway_job_workers_enabled=True, gateway_job_item_timeout_seconds=1.5):
        job = await suite.finished_job(tenant, job_id, seconds=60)
    assert job.results[0].error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0], job.results[0]
    infos = [error_details_pb2.ErrorInfo() for _ in job.results[0].error.details]
    infos = [info for info, d in zip(infos, job.results[0].error.details, strict=True) if d.Unpack(info)]
    # The item's own limit, not a dependency that did not answer (a call of the flow's, given the time left,
    # reaches the deadline a little before the item's limit does).
    assert [info.reason for info in infos] == ["JOB_ITEM_TIMEOUT"], job.results[0]
    audited = await suite.wait_rows(
        "SELECT request_id, status_code, error_reason FROM audit.records WHERE tenant_id = :t AND kind = 'interaction'",
        t=tenant.tenant_id,
    )
    assert [(r.status_code, r.error_reason) for r in audited] == [
        (grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "DEADLINE_EXCEEDED")
    ], audited
    ledger = await suite.wait_rows(
        "SELECT request_id, completion_tokens FROM metering.usage_ledger WHERE tenant_id = :t",
        t=tenant.tenant_id,
    )
    assert [r.request_id for r in ledger] == [audited[0].request_id]  # what the model produced is billed
