"""The JetStream work queue of jobs: one message per job (``<tenant>/<job id>``), consumed by every
gateway's workers through one durable pull consumer, so each job is with one worker at a time.

Work-queue retention deletes a message once acknowledged: a worker acknowledges only after the job's
terminal state is committed. Until then it reports progress (``in_progress``) every third of ``ack_wait``;
a worker that dies stops doing so and JetStream hands the job to another one after ``ack_wait``.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from parapet.kit.bus import Bus, StreamSpec

SUBJECT = "parapet.jobs.v1.run"
CONSUMER = "gateway-job-workers"

JOBS_STREAM = StreamSpec(
    name="JOBS",
    subjects=(SUBJECT,),
    retention="workqueue",
    description="Gateway async jobs waiting for or held by a worker (one message per job).",
)


def consumer_config(ack_wait_seconds: float, max_ack_pending: int) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=CONSUMER,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait_seconds,
        # Attempts are counted in the job row (the lease), which also sees deliveries the sweeper re-queued;
        # JetStream itself never gives up on a job.
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
    )


def message_body(tenant_id: str, job_id: str) -> bytes:
    return f"{tenant_id}/{job_id}".encode()


def parse_body(body: bytes) -> tuple[str, str] | None:
    """``(tenant_id, job_id)``, the id in its canonical form; None for a body that names no possible job
    (the worker drops it: the database would refuse an id that is no UUID, on every redelivery)."""
    tenant_id, slash, job_id = body.decode(errors="replace").partition("/")
    if not (slash and tenant_id and job_id):
        return None
    try:
        return tenant_id, str(uuid.UUID(job_id))
    except ValueError:
        return None


async def enqueue(bus: Bus, tenant_id: str, job_id: str, msg_id: str | None = None) -> None:
    """Publish the job's message and wait for JetStream's ack; ``msg_id`` (default: the job id)
    de-duplicates a repeat within the stream's duplicate window."""
    await bus.publish(SUBJECT, message_body(tenant_id, job_id), msg_id=msg_id or job_id)


async def stream_created(bus: Bus) -> datetime | None:
    """When the JOBS stream was created (declared again first when it is missing); None when the server does not
    say. A job whose message was published before then was lost with an earlier stream (NATS restarted without
    its store, an operator removed the stream): the sweeper queues it again."""
    try:
        info = await bus.jetstream.stream_info(JOBS_STREAM.name)
    except NotFoundError:
        await bus.ensure_stream(JOBS_STREAM)
        info = await bus.jetstream.stream_info(JOBS_STREAM.name)
    return info.created
