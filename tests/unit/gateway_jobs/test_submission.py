"""SubmitJob's limits, its idempotency fingerprint, the request each item runs as, and the Job message."""

from __future__ import annotations

import datetime

import pytest

from parapet.gateway.v1 import chat_service_pb2, job_pb2, job_service_pb2
from parapet.kit.errors import InvalidArgument, QuotaExceeded
from parapet.status.v1 import status_pb2
from services.gateway.jobs import queue, submission
from services.gateway.jobs.records import job_message, status_of
from services.gateway.jobs.store import JobRow


def _request(count: int = 1, **metadata: str) -> job_service_pb2.SubmitJobRequest:
    items = [chat_service_pb2.ChatRequest(model="fast", metadata={"item": str(i)}) for i in range(count)]
    return job_service_pb2.SubmitJobRequest(
        idempotency_key="k", chat_batch=job_pb2.ChatBatch(requests=items), metadata=metadata
    )


def _fields(request: job_service_pb2.SubmitJobRequest) -> list[str]:
    with pytest.raises(InvalidArgument) as raised:
        submission.validate(request)
    (bad_request,) = raised.value.details
    return [v.field for v in bad_request.field_violations]  # type: ignore[attr-defined]


def test_limits_are_field_violations() -> None:
    submission.validate(_request(10_000))
    assert _fields(_request(10_001)) == ["chat_batch.requests"]
    assert _fields(_request(0)) == ["chat_batch.requests"]
    assert _fields(job_service_pb2.SubmitJobRequest(idempotency_key="k" * 129)) == [
        "idempotency_key",
        "chat_batch",
    ]
    assert _fields(_request(1, **{f"k{i}": "v" for i in range(17)}))[-1] == "metadata"
    # The job's labels merged into an item's must stay within one chat's bound too.
    assert _fields(_request(1, **{f"k{i}": "v" for i in range(16)})) == ["chat_batch.requests[0].metadata"]
    assert _fields(_request(1, k="v" * 257)) == ["metadata['k']"]


def test_the_fingerprint_covers_submitter_spec_and_labels() -> None:
    base = _request(2, a="1")
    digest = submission.fingerprint("alice", base.chat_batch, base.metadata)
    assert digest == submission.fingerprint("alice", _request(2, a="1").chat_batch, {"a": "1"})
    assert digest != submission.fingerprint("bob", base.chat_batch, base.metadata)
    assert digest != submission.fingerprint("alice", _request(3, a="1").chat_batch, base.metadata)
    assert digest != submission.fingerprint("alice", base.chat_batch, {"a": "2"})


def test_an_item_runs_with_the_job_labels_and_without_its_own_key() -> None:
    item = chat_service_pb2.ChatRequest(idempotency_key="mine", metadata={"x": "item"})
    request = submission.item_request(item, {"x": "job", "batch": "b1"})
    assert request.idempotency_key == "" and dict(request.metadata) == {"x": "item", "batch": "b1"}
    assert item.idempotency_key == "mine"  # the stored spec is not changed
    assert submission.item_request_id("j1", 7) == "job-j1-7"
    # A later run of the item is a chat of its own downstream (metering would take the same id for a retry).
    assert submission.item_request_id("j1", 7, run=1) == "job-j1-7"
    assert submission.item_request_id("j1", 7, run=3) == "job-j1-7-run3"


def test_queue_messages_round_trip_and_malformed_ones_are_recognised() -> None:
    job_id = "0b9c3f2e-6a41-4f0e-9a57-2d8e1c4b7a10"
    assert queue.parse_body(queue.message_body("acme", job_id)) == ("acme", job_id)
    assert queue.parse_body(f"acme/{job_id.upper()}".encode()) == ("acme", job_id)  # canonical form
    assert queue.parse_body(b"no-slash") is None and queue.parse_body(f"/{job_id}".encode()) is None
    assert queue.parse_body(b"acme/") is None and queue.parse_body(b"acme/not-a-uuid") is None


def test_a_stored_job_becomes_its_message() -> None:
    error = status_of(QuotaExceeded("budget", reason="BUDGET_EXCEEDED", retry_after=2.0))
    now = datetime.datetime.now(datetime.UTC)
    row = JobRow(
        tenant_id="acme",
        job_id="j1",
        idempotency_key="k",
        spec_sha256=b"",
        metadata={"a": "1"},
        subject="alice",
        api_key_id="key",
        state="failed",
        total_items=3,
        succeeded_items=1,
        failed_items=1,
        prompt_tokens=10,
        completion_tokens=20,
        cached_tokens=0,
        usage_estimated=True,
        cost_micros=99,
        currency_code="USD",
        error=error.SerializeToString(),
        attempts=1,
        create_time=now,
        start_time=now,
        end_time=now,
        expire_time=now + datetime.timedelta(days=30),
    )
    answer = chat_service_pb2.ChatResponse(text="hi").SerializeToString()
    job = job_message(row, [(0, True, answer, None), (2, False, None, error.SerializeToString())])
    assert job.state == job_pb2.JOB_STATE_FAILED and job.error.code == 8 and len(job.error.details) == 3
    assert (job.progress.total_items, job.progress.succeeded_items, job.progress.failed_items) == (3, 1, 1)
    assert job.usage.estimated and job.cost.amount_micros == 99
    assert job.expire_time.ToDatetime(tzinfo=datetime.UTC) - job.end_time.ToDatetime(
        tzinfo=datetime.UTC
    ) == datetime.timedelta(days=30)
    assert job.results[0].response.text == "hi" and job.results[1].error == status_pb2.Status.FromString(
        error.SerializeToString()
    )
    assert [r.index for r in job.results] == [0, 2]


def test_the_fingerprint_ignores_the_items_own_idempotency_keys() -> None:
    """ChatBatch says the items' idempotency_key fields are ignored (the job's key covers them): a retry of the
    same job whose client drew new item keys is the same job, not IDEMPOTENCY_KEY_REUSED. The stored spec's
    fingerprint does not change for items without a key (proto3 leaves an empty string out)."""
    first, retry, plain = _request(2), _request(2), _request(2)
    for index, (a, b) in enumerate(zip(first.chat_batch.requests, retry.chat_batch.requests, strict=True)):
        a.idempotency_key, b.idempotency_key = f"first-{index}", f"retry-{index}"
    digest = submission.fingerprint("alice", first.chat_batch, {})
    assert digest == submission.fingerprint("alice", retry.chat_batch, {})
    assert digest == submission.fingerprint("alice", plain.chat_batch, {})
    assert first.chat_batch.requests[0].idempotency_key == "first-0"  # the caller's request is not changed


def test_a_job_fingerprinted_before_the_item_keys_were_left_out_is_still_the_same_job() -> None:
    """Before 2026-12-06 the items' keys were part of the fingerprint: such a stored job, retried with the same
    keys after the upgrade, must still be the same job, not IDEMPOTENCY_KEY_REUSED."""
    import hashlib

    job = _request(2)
    for index, item in enumerate(job.chat_batch.requests):
        item.idempotency_key = f"k-{index}"
    earlier = hashlib.sha256()  # the earlier form: the batch as sent, item keys included
    for part in (b"alice", job.chat_batch.SerializeToString(deterministic=True)):
        earlier.update(len(part).to_bytes(8, "big"))
        earlier.update(part)
    assert earlier.digest() != submission.fingerprint("alice", job.chat_batch, {})
    assert submission.same_job(earlier.digest(), "alice", job.chat_batch, {})
    assert submission.same_job(
        submission.fingerprint("alice", job.chat_batch, {}), "alice", job.chat_batch, {}
    )
    assert not submission.same_job(earlier.digest(), "bob", job.chat_batch, {})
