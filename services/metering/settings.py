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
        5.0, gt=0, description="How often expired reservations are released and old counters deleted."
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
        86400.0, gt=0, description="Sent outbox rows are deleted after this (the ledger keeps the usage)."
    )
