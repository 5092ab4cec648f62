"""Settings of the billing service: its durable JetStream consumer and batching."""

from __future__ import annotations

from pydantic import Field, field_validator

from parapet.events.usage import USAGE_STREAM
from services.metering.settings import PolicySettings


class BillingSettings(PolicySettings):
    """Batches trade latency for throughput: one database transaction and one round of acks per batch."""

    consumer_name: str = Field("billing", description="Durable JetStream consumer name on the USAGE stream.")
    fetch_batch_size: int = Field(
        1000, gt=0, le=10000, description="Usage events fetched, applied and acknowledged per transaction."
    )
    fetch_timeout_seconds: float = Field(
        0.5, gt=0, description="How long one fetch waits for events when the stream is idle."
    )
    ack_wait_seconds: float = Field(
        30.0, gt=0, description="An event not acknowledged this long after delivery is redelivered."
    )
    max_ack_pending: int = Field(
        20000, gt=0, description="Events delivered but not yet acknowledged, at most (flow control)."
    )
    # 9 days: the USAGE stream's 7 (a message can be delivered again as long as the stream keeps it) plus
    # metering's default outbox retention of 1 (how far back a replay reaches; the replayed message then stays
    # in the stream 7 more days) plus a day's margin. docs/metering.md, "Keeping the tables small".
    processed_event_retention_seconds: float = Field(
        9 * 86400.0,
        description="Processed event ids (billing's idempotency key) are deleted this long after they were "
        "applied. Must exceed the USAGE stream's max age (7 days) plus metering's "
        "`PARAPET_OUTBOX_RETENTION_SECONDS`, or a redelivered or replayed event is counted twice.",
    )
    processed_event_sweep_interval_seconds: float = Field(
        60.0, gt=0, description="How often processed event ids past their retention are deleted."
    )

    @field_validator("processed_event_retention_seconds")
    @classmethod
    def _ids_outlive_the_stream(cls, value: float) -> float:
        # The part of the rule billing can check alone: metering's outbox retention is metering's setting.
        stream_age = USAGE_STREAM.max_age_seconds or 0.0
        if value <= stream_age:
            raise ValueError(
                f"must exceed the USAGE stream's max age ({stream_age:.0f} s) plus metering's outbox "
                "retention, or redelivered events are counted twice"
            )
        return value
