"""Settings of the billing service: its durable JetStream consumer and batching."""

from pydantic import Field

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
