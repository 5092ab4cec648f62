"""A message at NATS's message limit is still set aside, its payload whole.

A set-aside copy adds headers (the reason, the subject it came on, its own Nats-Msg-Id: up to about 400 bytes). NATS
counts headers and payload against its max_payload; nats-py checks the payload alone. Until 2026-12-06 a message
within that margin of the limit made a copy over it: sent, refused with "Maximum Payload Violation", the consumer's
connection closed; the message was nak'ed and came back every 30 s, dropping the connection each time, and was never
set aside."""

from __future__ import annotations

from parapet.audit.v1 import audit_record_pb2, audit_service_pb2
from parapet.events.audit import (
    AUDIT_STREAM,
    REJECTED_FROM_HEADER,
    REJECTED_REASON_HEADER,
    REJECTED_STREAM,
    REJECTED_SUBJECT_PREFIX,
    REJECTED_TRIMMED_HEADER,
    headers,
    subject,
)
from parapet.kit.bus import Bus, message_size
from tests.integration.audit.conftest import (
    Audit,
    in_stream,
    interaction,
    new_tenant,
    wait_for_count,
    wait_for_stored,
)

SOURCE = "/parapet/gateway"


def _misfiled_at_limit(tenant: str, limit: int) -> tuple[audit_record_pb2.AuditRecord, dict[str, str]]:
    """A record of "user-x" on ``tenant``'s subject naming another tenant (set aside), its prompt grown until the
    message, CloudEvents headers and Nats-Msg-Id included, is exactly ``limit`` bytes as NATS counts it."""
    record = interaction("user-x", prompt="")
    record.tenant_id = "some-other-tenant"
    attributes = headers(record, SOURCE)
    for _ in range(10):  # the length prefixes grow by a byte or two on the way: a few steps settle it
        size = message_size(record.SerializeToString(), attributes, msg_id=record.record_id)
        if size == limit:
            return record, attributes
        record.interaction.body.prompt = "x" * (len(record.interaction.body.prompt) + limit - size)
    raise AssertionError("no prompt length makes the message exactly the limit")


async def _copies(bus: Bus, tenant: str) -> list[tuple[bytes, dict[str, str]]]:
    """The payload and headers of each message on ``tenant``'s rejected subject."""
    aside = await bus.jetstream.pull_subscribe(
        REJECTED_SUBJECT_PREFIX + tenant, stream=REJECTED_STREAM.name, durable=None
    )
    try:
        messages = await aside.fetch(10, timeout=5)
    finally:
        await aside.unsubscribe()
    return [(m.data, dict(m.headers or {})) for m in messages]


async def test_messages_at_the_limit_are_set_aside_whole_and_the_next_record_stored(
    audit: Audit, nats_url: str
) -> None:
    tenant = new_tenant()
    bus = await Bus.connect(nats_url)
    try:
        limit = bus.client.max_payload
        misfiled, attributes = _misfiled_at_limit(tenant, limit)
        await bus.publish(
            subject(tenant), misfiled.SerializeToString(), msg_id=misfiled.record_id, headers=attributes
        )
        # Bytes that are no record, with no headers at all: the payload alone is the limit, so the copy can carry
        # no header either.
        bare = b"\xff" * limit
        await bus.jetstream.publish(subject(tenant), bare)
        good = interaction("user-y")
        good.tenant_id = tenant
        await bus.publish(subject(tenant), good.SerializeToString(), msg_id=good.record_id)

        assert (
            await wait_for_count(
                lambda: in_stream(bus, REJECTED_STREAM.name, REJECTED_SUBJECT_PREFIX + tenant), 2
            )
            == 2
        )
        assert await wait_for_stored(audit.database, tenant, 1) == 1

        async def left_audit() -> (
            int
        ):  # set aside, then taken off the AUDIT work queue (the record too: stored)
            return 3 - await in_stream(bus, AUDIT_STREAM.name, subject(tenant))

        assert await wait_for_count(left_audit, 3) == 3

        copies = dict(await _copies(bus, tenant))
        assert set(copies) == {misfiled.SerializeToString(), bare}  # each payload kept whole
        kept = copies[misfiled.SerializeToString()]
        # The reason and the subject kept; CloudEvents attributes (the record repeats them) left off, and named.
        assert kept[REJECTED_FROM_HEADER] == subject(tenant)
        assert kept[REJECTED_REASON_HEADER] == "tenant_id does not match the subject"
        assert "ce-id" in kept[REJECTED_TRIMMED_HEADER].split(", ")
        assert copies[bare] == {}

        # The copy decodes, so Erase still reaches the user's prompt in it.
        request = audit_service_pb2.EraseRequest(user_id="user-x", reason="ticket 9")
        erased = await audit.stub.Erase(request, metadata=audit.metadata(tenant), timeout=10)
        assert erased.rejected_deleted_count == 1
    finally:
        await bus.close()
