"""The audit stream as docs/contracts.md defines it: subject, CloudEvents headers, stream declaration.

Every producer (gateway, auth, metering) and the audit service declare the stream with this same configuration, so
whichever starts first creates it and the others' declarations are no-ops.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC

from parapet.audit.v1 import admin_action_pb2, audit_record_pb2
from parapet.events.tenants import tenant_of_subject
from parapet.kit.bus import Bus, StreamSpec
from parapet.kit.context import current_request_id
from parapet.kit.identity import Principal

SUBJECT_PREFIX = "parapet.audit.v1."
CE_TYPE = "dev.parapet.audit.v1.AuditRecord"
# A work queue: a message leaves the stream once the audit service has stored it (ack) or set it aside (term),
# so the prompts and answers it carries are only in PostgreSQL, where body retention and erasure reach them.
# One that no one has taken yet stays, however long the audit service is down: no max_age, and not "interest"
# retention, which drops what is published while no consumer exists. A work queue admits one consumer (the
# audit service's durable). An AUDIT stream an earlier release created (retention "limits", which kept every
# message for ever) cannot be changed in place: the audit service logs an error, and docs/deploy.md moves it.
AUDIT_STREAM = StreamSpec(
    name="AUDIT",
    subjects=(SUBJECT_PREFIX + "*",),
    retention="workqueue",
    description="Audit records until the audit service stores them",
)
# The longest a record's bodies may be kept (ten years: beyond any retention rule, and a bound that keeps
# expiry dates computable). Tenant policies (auth) and records (audit) are held to it.
MAX_BODY_RETENTION_DAYS = 3660
# Messages the audit service can never store (undecodable, invalid, refused by the database) are kept here
# for an operator, under their tenant's token (or "unknown"), instead of being dropped: one more token than
# the audit subjects, so the two streams never overlap.
REJECTED_SUBJECT_PREFIX = SUBJECT_PREFIX + "rejected."
REJECTED_STREAM = StreamSpec(
    name="AUDIT_REJECTED",
    subjects=(REJECTED_SUBJECT_PREFIX + "*",),
    # They may hold prompts and answers (audit's Erase deletes a user's from here): kept as long as the default
    # body retention, long enough for the alert to be acted on (the operator may change it on the stream).
    max_age_seconds=30 * 86400,
    description="Audit messages the audit service could not store, kept 30 days for an operator",
)
REJECTED_REASON_HEADER = "parapet-rejected-reason"
REJECTED_FROM_HEADER = "parapet-rejected-subject"
# On a set-aside copy that had to leave headers off to fit NATS's message limit: the names of those left off or cut.
REJECTED_TRIMMED_HEADER = "parapet-rejected-trimmed"
# On a set-aside copy without its payload (larger than the limit NATS now has): its size and SHA-256.
REJECTED_PAYLOAD_HEADER = "parapet-rejected-payload"


def subject(tenant_id: str) -> str:
    return SUBJECT_PREFIX + tenant_id


def tenant_of(subject_name: str) -> str | None:
    """The tenant a subject names, or None when it is not an audit subject of a valid tenant id."""
    return tenant_of_subject(SUBJECT_PREFIX, subject_name)


def headers(record: audit_record_pb2.AuditRecord, source: str) -> dict[str, str]:
    """CloudEvents binary-mode attributes of ``record`` published by ``source`` (e.g. ``/parapet/gateway``)."""
    return {
        "content-type": "application/protobuf",
        "ce-specversion": "1.0",
        "ce-id": record.record_id,
        "ce-source": source,
        "ce-type": CE_TYPE,
        "ce-time": record.create_time.ToDatetime(tzinfo=UTC).isoformat(),
        "ce-subject": record.tenant_id,
    }


async def publish(bus: Bus, record: audit_record_pb2.AuditRecord, *, source: str) -> None:
    """Publish ``record`` to its tenant's subject (waits for JetStream's ack; de-duplicated by record id)."""
    await bus.publish(
        subject(record.tenant_id),
        record.SerializeToString(deterministic=True),
        msg_id=record.record_id,
        headers=headers(record, source),
    )


def admin_record(
    tenant_id: str,
    actor: Principal,
    method: str,
    target: str,
    *,
    status_code: int = 0,
    error_reason: str = "",
    attributes: Mapping[str, str] | None = None,
) -> audit_record_pb2.AuditRecord:
    """The audit record of an administrative action by ``actor`` (a new record id; now as its time)."""
    record = audit_record_pb2.AuditRecord(
        record_id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        admin_action=admin_action_pb2.AdminAction(
            actor=actor.to_proto(),
            method=method,
            target=target,
            status_code=status_code,
            error_reason=error_reason,
            attributes=dict(attributes or {}),
            request_id=current_request_id() or "",
        ),
    )
    record.create_time.GetCurrentTime()
    return record
