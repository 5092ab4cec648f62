"""Settings of the metering service: where budgets come from, reservation lifetimes, the outbox relay."""

from pathlib import Path

from pydantic import Field

from parapet.kit.config import ServiceSettings


class PolicySettings(ServiceSettings):
    """Where a service reads tenant policies (budgets, rate limits, role definitions) from."""

    policy_file: Path | None = Field(
        None,
        description="JSON file mapping tenant id to its `parapet.auth.v1.TenantPolicy` (protobuf JSON). "
        "Set: policies come from this file (deployments without the auth service, tests). "
        "Unset: from the auth service's `GetEffectivePolicy` at `PARAPET_AUTH_ADDRESS`.",
    )
    policy_cache_seconds: float = Field(
        10.0, gt=0, description="How long a tenant's policy fetched from auth is reused."
    )


class MeteringSettings(PolicySettings):
    """Budgets are in the deployment's one price currency; reservations expire; the relay drains the outbox."""

    currency_code: str = Field(
        "USD", pattern=r"^[A-Z]{3}$", description="ISO 4217 currency of every price, cost and cost budget."
    )
    reservation_ttl_seconds: float = Field(
        300.0, gt=0, description="Lifetime of an unsettled reservation when Reserve sets no ttl."
    )
    reservation_max_ttl_seconds: float = Field(
        3600.0, gt=0, description="Longest ttl a Reserve may ask for; longer asks are refused."
    )
    # Both background loops share the event loop with Reserve: each round is a database transaction, and a
    # Reserve arriving meanwhile waits for it. At 0.2 s and 1 s they set Reserve's p99 (2.5 ms against 1.7
    # at these values, p50 unchanged; docs/metering.md).
    sweep_interval_seconds: float = Field(
        5.0,
        gt=0,
        description="How often expired reservations are released and old counters, outbox rows and "
        "ended reservations deleted.",
    )
    relay_interval_seconds: float = Field(
        1.0,
        gt=0,
        description="How often the outbox relay looks for unsent events when not woken (every settlement in "
        "this replica wakes it; the poll picks up what failed to publish or another replica left).",
    )
    relay_batch_size: int = Field(
        500, gt=0, le=10000, description="Outbox rows the relay publishes per transaction."
    )
    relay_workers: int = Field(
        2,
        gt=0,
        le=16,
        description="Relay loops per replica; they take different rows (SKIP LOCKED), so one's database "
        "round trips overlap another's wait for acks.",
    )
    relay_ack_timeout_seconds: float = Field(
        2.0, gt=0, description="How long the relay waits for JetStream's ack before retrying a batch later."
    )
    outbox_retention_seconds: float = Field(
        86400.0,
        gt=0,
        description="Sent outbox rows are deleted this long after they were sent (the ledger keeps the "
        "usage). Also how far back ReplayUsageEvents reaches (less a minute): billing's "
        "`PARAPET_PROCESSED_EVENT_RETENTION_SECONDS` must exceed this plus the USAGE stream's 7 days.",
    )
    # Measured from a reservation's end (settled, released or expired), never from its start: an active one
    # is never deleted. 7 days: the longest a legitimate Settle can trail its reservation is the ttl (at most
    # reservation_max_ttl_seconds) plus the gateway's outbox delay, i.e. a metering outage (docs/metering.md).
    reservation_retention_seconds: float = Field(
        7 * 86400.0,
        ge=3600,
        description="Ended reservations (settled, released, expired) are deleted this long after they "
        "ended. A Settle or Release arriving later still counts the usage once (the ledger is keyed by "
        "request_id), but charges the current budget windows rather than the reservation's, and Release "
        "answers NOT_FOUND.",
    )
    auth_platform_tenant_id: str = Field(
        "parapet",
        description="The operators' tenant (the variable auth reads too): only its principals holding "
        "`platform.admin` may call ReplayUsageEvents.",
    )
