"""Erasure in the AUDIT_REJECTED stream: a user's records set aside as unstorable are deleted from it.

Those copies may hold the user's prompts and answers (docs/audit.md), so `Erase` has to reach them as it reaches
the stored bodies. The stream keeps each tenant's messages under its own subject; they are read one at a time by
subject (JetStream's "next message on this subject" lookup, no consumer to create or clean up) and the user's are
deleted by sequence. A message that does not decode as an AuditRecord names no user and is left for the
operator; so is one of an unknown tenant (set aside because its subject named none).
"""

from __future__ import annotations

from google.protobuf.message import DecodeError
from nats.js.errors import APIError, NotFoundError

from parapet.audit.v1 import audit_record_pb2
from parapet.events.audit import REJECTED_STREAM, REJECTED_SUBJECT_PREFIX
from parapet.kit.bus import Bus


def _user_of(data: bytes) -> str | None:
    try:
        record = audit_record_pb2.AuditRecord.FromString(data)
    except DecodeError:
        return None
    return record.interaction.user_id if record.WhichOneof("payload") == "interaction" else None


async def delete_user_rejected(bus: Bus, tenant_id: str, user_id: str) -> int:
    """Delete ``user_id``'s set-aside records of ``tenant_id``; returns how many. Raises when NATS fails, so that
    an erasure is never reported complete while copies remain.

    One lookup per message of the tenant's subject: set-aside records are rare (each is an alert), and the scan
    stops at the subject's last message when it began, so records set aside meanwhile cannot keep it going."""
    subject = REJECTED_SUBJECT_PREFIX + tenant_id
    try:
        info = await bus.jetstream.stream_info(REJECTED_STREAM.name, subjects_filter=subject)
    except NotFoundError:
        return 0  # no stream yet: nothing was ever set aside
    if not (info.state.subjects or {}).get(subject):
        return 0
    last = info.state.last_seq or 0
    deleted = 0
    sequence = 1
    while sequence <= last:
        try:
            message = await bus.jetstream.get_msg(
                REJECTED_STREAM.name, seq=sequence, subject=subject, next=True
            )
        except NotFoundError:
            break  # no message on the subject at or after this sequence
        assert message.seq is not None
        if message.seq > last:
            break
        if message.data is not None and _user_of(message.data) == user_id:
            deleted += await _delete(bus, message.seq)
        sequence = message.seq + 1
    return deleted


async def _delete(bus: Bus, sequence: int) -> int:
    """1 when this call deleted message ``sequence``, 0 when it was already gone (another Erase, max_age)."""
    try:
        await bus.jetstream.delete_msg(REJECTED_STREAM.name, sequence)
    except APIError:
        try:
            await bus.jetstream.get_msg(REJECTED_STREAM.name, seq=sequence)
        except NotFoundError:
            return 0
        raise
    return 1
