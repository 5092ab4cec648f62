"""Async jobs through the real governed flow: the gateway's own workers run each item as the submitter
(auth's delegated token), so every item is screened, metered, settled and audited like a Chat call."""

from __future__ import annotations

from parapet.gateway.v1 import job_pb2, job_service_pb2
from tests.integration.gateway.conftest import MODULE, Suite, unary_question

pytestmark = MODULE


async def test_job_items_run_through_the_governed_flow_and_are_settled_and_audited(suite: Suite) -> None:
    tenant = await suite.tenant()
    questions = ["first question", "second question", "my email is jane.doe@example.com"]
    submitted = await suite.jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(
            idempotency_key="batch-1",
            chat_batch=job_pb2.ChatBatch(requests=[unary_question(q, model="gpt") for q in questions]),
            metadata={"origin": "nightly"},
        ),
        metadata=tenant.metadata(),
    )
    job = await suite.finished_job(tenant, submitted.job.job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert (job.progress.total_items, job.progress.succeeded_items, job.progress.failed_items) == (3, 3, 0)
    assert [r.index for r in job.results] == [0, 1, 2]
    texts = [r.response.text for r in job.results]
    assert texts[:2] == ["You said: first question", "You said: second question"]
    # Screened like any chat: the provider saw a masked address, the submitter gets their own value back.
    assert texts[2] == "You said: my email is jane.doe@example.com"
    assert not any("jane.doe@example.com" in str(r.body) for r in suite.upstream.requests)
    request_ids = [r.response.summary.request_id for r in job.results]
    assert sum(r.response.summary.cost.amount_micros for r in job.results) == job.cost.amount_micros > 0
    ledger = await suite.wait_rows(
        "SELECT request_id, cost_micros FROM metering.usage_ledger WHERE tenant_id = :t",
        t=tenant.tenant_id,
        count=3,
    )
    assert sorted(r.request_id for r in ledger) == sorted(request_ids)
    assert sum(r.cost_micros for r in ledger) == job.cost.amount_micros
    audited = await suite.wait_rows(
        "SELECT request_id, user_id FROM audit.records WHERE tenant_id = :t AND kind = 'interaction'",
        t=tenant.tenant_id,
        count=3,
    )
    assert sorted(r.request_id for r in audited) == sorted(request_ids)
    assert {r.user_id for r in audited} == {tenant.user_id}


async def test_an_item_the_flow_refuses_fails_alone_with_the_status_chat_would_give(suite: Suite) -> None:
    tenant = await suite.tenant()
    submitted = await suite.jobs.SubmitJob(
        job_service_pb2.SubmitJobRequest(
            idempotency_key="batch-2",
            chat_batch=job_pb2.ChatBatch(
                requests=[
                    unary_question("fine", model="gpt"),
                    unary_question("unknown model", model="no-such-model"),
                ]
            ),
        ),
        metadata=tenant.metadata(),
    )
    job = await suite.finished_job(tenant, submitted.job.job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert (job.progress.succeeded_items, job.progress.failed_items) == (1, 1)
    assert job.results[0].response.text == "You said: fine"
    assert job.results[1].HasField("error") and job.results[1].error.code != 0
