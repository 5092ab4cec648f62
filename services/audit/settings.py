"""Settings of the audit service: checkpoint key, body retention defaults, consumer and job pacing."""

from pathlib import Path
from typing import Literal

from pydantic import Field

from parapet.events.audit import MAX_BODY_RETENTION_DAYS
from parapet.kit.config import ServiceSettings


class AuditSettings(ServiceSettings):
    """Audit-specific settings; the deployment defaults apply where a record's tenant policy leaves a gap."""

    audit_checkpoint_key_file: Path | None = Field(
        None,
        description="PEM (PKCS#8) Ed25519 private key that signs chain checkpoints; created there when "
        "missing. Unset: an in-memory key (development only: old checkpoints stop verifying on restart).",
    )
    audit_checkpoint_interval_seconds: float = Field(
        60.0, gt=0, description="How often each tenant's advanced chain head gets a signed checkpoint."
    )
    audit_default_body_retention: Literal["full", "masked", "hash_only", "none"] = Field(
        "masked", description="Body form when a record's policy says BODY_RETENTION_UNSPECIFIED."
    )
    audit_default_retention_days: int = Field(
        30,
        ge=1,
        # The bound of a record's own retention_days (and of tenant policies): past it, a late record's expiry date
        # cannot be computed.
        le=MAX_BODY_RETENTION_DAYS,
        description="Days bodies are kept when a record's policy says 0 (the deployment default); at most "
        f"{MAX_BODY_RETENTION_DAYS}.",
    )
    audit_retention_interval_seconds: float = Field(
        300.0, gt=0, description="How often the retention job drops bodies past their retention."
    )
    audit_consumer_batch_size: int = Field(
        500, ge=1, le=10_000, description="Audit stream messages fetched and committed per transaction."
    )
    audit_consumer_durable: str = Field(
        "audit",
        description="Name of the durable JetStream consumer (shared by every replica). AUDIT is a work "
        "queue, which admits one consumer: renaming it needs the old one removed first (docs/audit.md).",
    )
