"""Settings of the gateway service: where the services of the request flow are (auth's address is in
every service's settings), the bounds of its caches, idempotency records and outbox, and (inherited) how
it runs async jobs."""

from pydantic import Field

from services.gateway.jobs.settings import JobSettings


class GatewaySettings(JobSettings):
    """The gateway calls every other service; `parapet up` sets these, Kubernetes uses service DNS names."""

    moderation_address: str | None = Field(None, description="host:port of the moderation service.")
    metering_address: str | None = Field(None, description="host:port of the metering service.")
    retrieval_address: str | None = Field(None, description="host:port of the retrieval service.")
    inference_address: str | None = Field(None, description="host:port of the inference service.")
    audit_address: str | None = Field(None, description="host:port of the audit service.")
    gateway_identity_cache_size: int = Field(
        10_000, gt=0, description="Credentials whose authentication the gateway remembers (LRU)."
    )
    gateway_identity_cache_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest a remembered authentication is reused (never past its internal token's expiry "
        "minus gateway_token_margin_seconds); auth's change notifications drop it sooner.",
    )
    gateway_token_margin_seconds: float = Field(
        30.0, ge=0, description="A cached internal token is not used when it expires sooner than this."
    )
    gateway_policy_cache_seconds: float = Field(
        30.0, gt=0, description="Longest a tenant policy version is reused without asking auth again."
    )
    gateway_models_cache_seconds: float = Field(
        60.0, gt=0, description="How long model prices (for budget reservations) are reused."
    )
    gateway_default_max_tokens: int = Field(
        1024,
        gt=0,
        description="Output tokens reserved when neither the request, the tenant policy nor the model "
        "names a maximum.",
    )
    gateway_speculative_inference: bool = Field(
        True,
        description="Start the model call beside the budget hold for callers whose last hold was granted "
        "without a warning; the answer waits for the hold, a refused hold cancels the call "
        "(services/gateway/headroom.py).",
    )
    gateway_idempotency_seconds: float = Field(
        86_400.0, gt=0, description="How long an idempotency key replays its first answer."
    )
    gateway_outbox_interval_seconds: float = Field(
        1.0, gt=0, description="How often undelivered audit records and settlements are retried."
    )
    gateway_chat_max_seconds: float = Field(
        300.0,
        gt=0,
        description="Longest a chat may run, as its deadline when the caller sets none or a later one. The "
        "default is metering's default budget-hold lifetime (PARAPET_RESERVATION_TTL_SECONDS) and the job "
        "item's limit: a chat that outlived its hold would no longer count against its budget.",
    )
    gateway_tenant_max_concurrent_chats: int = Field(
        256,
        ge=0,
        le=1_000_000,
        description="Most chats (StreamChat and Chat) one tenant may have in progress on one gateway replica; "
        "more are refused at once, RESOURCE_EXHAUSTED TENANT_CONCURRENCY_LIMIT with RetryInfo, so one tenant's "
        "burst cannot take a replica from the others. 0: no limit. Job items are bounded by their workers.",
    )
    gateway_send_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="Longest a StreamChat caller may leave the next message unaccepted (it stopped reading "
        "and the connection's flow-control window is full) before the chat is ended (DEADLINE_EXCEEDED "
        "CALLER_NOT_READING) and settled for what was produced.",
    )
    gateway_downstream_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="Timeout of each non-streaming call to another service (screening, budget, retrieval).",
    )
