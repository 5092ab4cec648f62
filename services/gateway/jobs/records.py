"""Stored jobs to their ``parapet.gateway.v1.Job`` messages, and errors to ``parapet.status.v1.Status``."""

from __future__ import annotations

import grpc

from parapet.gateway.v1 import job_pb2
from parapet.kit.errors import ParapetError, status_of_call, to_status_proto
from parapet.status.v1 import status_pb2
from parapet.usage.v1 import money_pb2, token_usage_pb2
from services.gateway.jobs.store import JobRow, ResultRow

STATES = {
    "queued": job_pb2.JOB_STATE_QUEUED,
    "running": job_pb2.JOB_STATE_RUNNING,
    "succeeded": job_pb2.JOB_STATE_SUCCEEDED,
    "failed": job_pb2.JOB_STATE_FAILED,
    "cancelled": job_pb2.JOB_STATE_CANCELLED,
}


def status_of(error: ParapetError | grpc.aio.AioRpcError) -> status_pb2.Status:
    """The status a ``Chat`` caller would have received for ``error``, with its typed details.

    ``parapet.status.v1.Status`` has google.rpc.Status's fields and numbers, so the bytes carry over as is.
    """
    if isinstance(error, ParapetError):
        google = to_status_proto(error)
    else:
        found = status_of_call(error)
        if found is None:
            return status_pb2.Status(code=error.code().value[0], message=error.details() or "")
        google = found
    return status_pb2.Status.FromString(google.SerializeToString())


def job_message(row: JobRow, results: list[ResultRow] | None = None) -> job_pb2.Job:
    job = job_pb2.Job(
        job_id=row.job_id,
        idempotency_key=row.idempotency_key,
        state=STATES[row.state],
        progress=job_pb2.JobProgress(
            total_items=row.total_items, succeeded_items=row.succeeded_items, failed_items=row.failed_items
        ),
        usage=token_usage_pb2.TokenUsage(
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            cached_tokens=row.cached_tokens,
            estimated=row.usage_estimated,
        ),
        cost=money_pb2.Money(currency_code=row.currency_code, amount_micros=row.cost_micros),
        metadata=row.metadata,
        user_id=row.subject,
    )
    if row.error is not None:
        job.error.ParseFromString(row.error)
    job.create_time.FromDatetime(row.create_time)
    if row.start_time is not None:
        job.start_time.FromDatetime(row.start_time)
    if row.end_time is not None:
        job.end_time.FromDatetime(row.end_time)
    if row.expire_time is not None:
        job.expire_time.FromDatetime(row.expire_time)
    job.results.extend(result_message(result) for result in results or ())
    return job


def result_message(result: ResultRow) -> job_pb2.JobItemResult:
    index, succeeded, response, error = result
    message = job_pb2.JobItemResult(index=index)
    if succeeded and response is not None:
        message.response.ParseFromString(response)
    elif error is not None:
        message.error.ParseFromString(error)
    return message


def progress_key(row: JobRow) -> tuple[str, int, int, int, bool]:
    """What a watcher is told about: a change of any of these is a new message."""
    return (row.state, row.succeeded_items, row.failed_items, row.total_items, row.start_time is not None)
