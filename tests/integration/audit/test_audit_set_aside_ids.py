"""Copies set aside to AUDIT_REJECTED are de-duplicated per message, not per stream sequence: AUDIT created again
(an operator moving it to work-queue retention, docs/deploy.md; a NATS back without its store) numbers its
messages from 1 again, and a new message's copy then carried an old one's id and was dropped as its duplicate."""

from __future__ import annotations

from pathlib import Path

from parapet.embedded import EmbeddedNats
from parapet.events.audit import AUDIT_STREAM, REJECTED_STREAM, REJECTED_SUBJECT_PREFIX, subject
from parapet.kit.bus import Bus
from parapet.kit.testing import TestKeys, running
from services.audit.app import APP
from tests.integration.audit.conftest import harness, in_stream, interaction, new_tenant, wait_for_count


async def _misfiled(bus: Bus, tenant: str) -> int:
    """Publish a record naming another tenant than its subject (it is set aside); returns its AUDIT sequence."""
    record = interaction("user-1")
    record.tenant_id = "some-other-tenant"
    ack = await bus.publish(subject(tenant), record.SerializeToString(), msg_id=record.record_id)
    return ack.seq


async def test_a_message_set_aside_after_audit_was_created_again_is_kept_beside_the_earlier_one(
    database_url: str, fresh_nats: EmbeddedNats, tmp_path: Path, keys: TestKeys
) -> None:
    tenant = new_tenant()
    async with harness(database_url, fresh_nats.url, tmp_path, keys) as parts, running(APP, parts.settings):

        async def copies() -> int:
            return await in_stream(parts.bus, REJECTED_STREAM.name, REJECTED_SUBJECT_PREFIX + tenant)

        first = await _misfiled(parts.bus, tenant)
        assert await wait_for_count(copies, 1) == 1
        # AUDIT removed and declared again (what a producer or the audit service does when it finds none).
        await parts.bus.jetstream.delete_stream(AUDIT_STREAM.name)
        await parts.bus.ensure_stream(AUDIT_STREAM)
        second = await _misfiled(parts.bus, tenant)
        assert second == first  # the same stream sequence, within AUDIT_REJECTED's duplicate window
        assert await wait_for_count(copies, 2) == 2

        async def left_audit() -> int:  # set aside, then taken off AUDIT
            return 1 - await in_stream(parts.bus, AUDIT_STREAM.name, subject(tenant))

        assert await wait_for_count(left_audit, 1) == 1
