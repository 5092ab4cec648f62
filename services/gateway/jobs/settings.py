"""Settings of the async jobs, a mixin that ``GatewaySettings`` inherits (fields prefixed ``gateway_job_``)."""

from pathlib import Path

from pydantic import Field

from parapet.kit.config import ServiceSettings


class JobSettings(ServiceSettings):
    """How this gateway process runs jobs; every replica serves JobService, any may run workers."""

    gateway_job_workers_enabled: bool = Field(
        True, description="Run job workers in this process (JobService is served either way)."
    )
    gateway_job_service_key_file: Path | None = Field(
        None,
        description="File holding the API key of the gateway's platform service account (role "
        "`token-delegator`; auth writes it when `PARAPET_AUTH_GATEWAY_KEY_FILE` is set). Workers use it to "
        "obtain each job submitter's token from auth (IssueDelegatedToken). Required when workers run.",
    )
    gateway_job_parallel_jobs: int = Field(2, gt=0, le=64, description="Jobs one process runs at once.")
    gateway_job_item_concurrency: int = Field(
        4, gt=0, le=256, description="Items of one job in flight at once (each is a whole governed chat)."
    )
    gateway_job_ack_wait_seconds: float = Field(
        30.0,
        gt=0,
        description="A job's lease: a worker that stops renewing it (every third of this) for this long is "
        "presumed dead, and JetStream redelivers the job to another worker, which resumes it.",
    )
    gateway_job_max_attempts: int = Field(
        10,
        gt=0,
        description="Runs of one job that ended without its worker giving it back (a crash, a lost lease, an "
        "unexpected error) before it is failed (JOB_ATTEMPTS_EXHAUSTED): a job that kills every worker that "
        "takes it must not circulate forever. Give-backs for an outage or a shutdown do not count.",
    )
    gateway_job_item_timeout_seconds: float = Field(
        300.0, gt=0, description="Longest one item (one chat) may run."
    )
    gateway_job_sweep_seconds: float = Field(
        10.0,
        gt=0,
        description="How often unfinished jobs missing from the queue (a publish that failed after the "
        "submit committed, a lost stream) are queued again.",
    )
    gateway_job_watch_poll_seconds: float = Field(
        5.0,
        gt=0,
        description="WatchJob re-reads the job at least this often, besides the change notifications "
        "(which a dropped listener connection could miss).",
    )
    gateway_job_retention_days: int = Field(
        30,
        ge=7,
        le=3660,
        description="A finished job (its spec and results, which hold prompts and answers) is deleted this "
        "many days after it ended (its expire_time, set when it ends: a change applies to jobs that end "
        "afterwards); DeleteJob deletes it sooner. At least 7: a job's idempotency key is promised for 7 days.",
    )
