"""The AUDIT stream is a work queue: a record leaves NATS once the audit service has stored it or set it aside,
so its bodies live only where body retention and Erase reach them; one no consumer has taken yet stays until
one does. An AUDIT stream of an earlier release (limits retention) is reported and can be moved as
docs/deploy.md says, losing nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from nats.js.api import RetentionPolicy
from nats.js.errors import NoStreamResponseError, NotFoundError

from parapet.embedded import EmbeddedNats
from parapet.events.audit import AUDIT_STREAM, REJECTED_STREAM, REJECTED_SUBJECT_PREFIX, publish, subject
from parapet.kit.bus import Bus
from parapet.kit.testing import TestKeys, running
from services.audit.app import APP
from tests.integration.audit.conftest import (
    Audit,
    harness,
    in_stream,
    interaction,
    new_tenant,
    wait_for_stored,
)

SOURCE = "/parapet/gateway"


async def _until(check: Callable[[], Awaitable[bool]], within: float = 15.0) -> bool:
    """Whether ``check`` holds within ``within`` seconds (acks and terms reach the stream just after a commit)."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def _publish_records(bus: Bus, tenant: str, count: int) -> None:
    for i in range(count):
        record = interaction(f"user-{i % 3}")
        record.tenant_id = tenant
        await publish(bus, record, source=SOURCE)


async def test_stored_records_leave_the_stream(audit: Audit, nats_url: str) -> None:
    tenant = new_tenant()
    bus = await Bus.connect(nats_url)
    try:
        await _publish_records(bus, tenant, 30)
        assert await wait_for_stored(audit.database, tenant, 30) == 30

        async def gone() -> bool:
            return await in_stream(bus, AUDIT_STREAM.name, subject(tenant)) == 0

        assert await _until(gone), await in_stream(bus, AUDIT_STREAM.name, subject(tenant))
    finally:
        await bus.close()


async def test_records_published_while_no_consumer_exists_wait_in_the_stream_until_stored(
    database_url: str, nats_url: str, tmp_path: Path, keys: TestKeys
) -> None:
    """As on a new deployment whose audit service has not started yet: a stream with "interest" retention would
    drop these at once, and a max_age would drop them after an outage that long."""
    tenant = new_tenant()
    async with harness(database_url, nats_url, tmp_path, keys) as parts:
        bus = parts.bus
        await parts.without_consumer()
        await _publish_records(bus, tenant, 40)
        await asyncio.sleep(0.5)
        assert await in_stream(bus, AUDIT_STREAM.name, subject(tenant)) == 40

        async with running(APP, parts.settings):
            assert await wait_for_stored(parts.database, tenant, 40) == 40

            async def gone() -> bool:
                return await in_stream(bus, AUDIT_STREAM.name, subject(tenant)) == 0

            assert await _until(gone), await in_stream(bus, AUDIT_STREAM.name, subject(tenant))


async def test_a_set_aside_message_leaves_the_stream_for_audit_rejected(audit: Audit, nats_url: str) -> None:
    tenant = new_tenant()
    rejected_subject = REJECTED_SUBJECT_PREFIX + tenant
    bus = await Bus.connect(nats_url)
    try:
        wrong, good = interaction("user-1"), interaction("user-2")
        wrong.tenant_id = "some-other-tenant"  # not the subject's tenant: set aside
        good.tenant_id = tenant
        await bus.publish(subject(tenant), wrong.SerializeToString(), msg_id=wrong.record_id)
        await publish(bus, good, source=SOURCE)
        assert await wait_for_stored(audit.database, tenant, 1) == 1

        async def moved() -> bool:
            return (
                await in_stream(bus, AUDIT_STREAM.name, subject(tenant)),
                await in_stream(bus, REJECTED_STREAM.name, rejected_subject),
            ) == (0, 1)

        assert await _until(moved), (
            await in_stream(bus, AUDIT_STREAM.name, subject(tenant)),
            await in_stream(bus, REJECTED_STREAM.name, rejected_subject),
        )
        kept = await bus.jetstream.get_msg(REJECTED_STREAM.name, seq=1, subject=rejected_subject, next=True)
        assert kept.data == wrong.SerializeToString()
    finally:
        await bus.close()


async def test_an_audit_stream_of_an_earlier_release_is_reported_and_moved_without_loss(
    database_url: str,
    fresh_nats: EmbeddedNats,
    tmp_path: Path,
    keys: TestKeys,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A NATS of its own: the test removes its AUDIT stream. The steps are docs/deploy.md's, with the audit
    service running throughout."""
    tenant = new_tenant()
    async with harness(database_url, fresh_nats.url, tmp_path, keys) as parts:
        settings, database, bus = parts.settings, parts.database, parts.bus
        js = bus.jetstream
        await bus.ensure_stream(dataclasses.replace(AUDIT_STREAM, retention="limits"))  # an earlier release's
        await _publish_records(bus, tenant, 10)
        caplog.set_level(logging.WARNING)
        async with running(APP, settings):
            assert await wait_for_stored(database, tenant, 10) == 10

            async def reported() -> bool:
                return any(
                    r.levelno == logging.ERROR
                    and "Moving the AUDIT stream to work-queue retention" in r.getMessage()
                    for r in caplog.records
                )

            assert await _until(reported, within=5)
            assert await in_stream(bus, AUDIT_STREAM.name, subject(tenant)) == 10  # stored, and still kept

            # 1. Seal it: producers are refused from now on (and keep their records to retry).
            sealed = (await js.stream_info(AUDIT_STREAM.name)).config
            await js.update_stream(dataclasses.replace(sealed, sealed=True))
            late = interaction("user-9")
            late.tenant_id = tenant
            with pytest.raises(Exception, match="sealed"):
                await publish(bus, late, source=SOURCE)

            # 2. Wait until the audit service's consumer has taken everything in it.
            async def drained() -> bool:
                info = await js.consumer_info(AUDIT_STREAM.name, settings.audit_consumer_durable)
                return (info.num_pending, info.num_ack_pending) == (0, 0)

            assert await _until(drained)

            # 3. Remove it; the audit service declares it again, a work queue now, and consumes on.
            await js.delete_stream(AUDIT_STREAM.name)

            async def work_queue() -> bool:
                try:
                    info = await js.stream_info(AUDIT_STREAM.name)
                except NotFoundError:
                    return False
                return info.config.retention == RetentionPolicy.WORK_QUEUE

            assert await _until(work_queue)
            await publish(bus, late, source=SOURCE)  # the producer's retry
            assert await wait_for_stored(database, tenant, 11) == 11

            async def gone() -> bool:
                return await in_stream(bus, AUDIT_STREAM.name, subject(tenant)) == 0

            assert await _until(gone)


async def test_a_nats_back_without_its_store_gets_both_streams_back_and_sets_aside_again(
    database_url: str, fresh_nats: EmbeddedNats, tmp_path: Path, keys: TestKeys
) -> None:
    """A NATS whose JetStream store is lost on restart (an emptyDir, a wiped volume) comes back without AUDIT and
    AUDIT_REJECTED. The consumer declared AUDIT again but not AUDIT_REJECTED: a record that can never be stored
    could not be set aside any more and came back every 30 s for ever, until the audit service restarted."""
    tenant = new_tenant()
    async with harness(database_url, fresh_nats.url, tmp_path, keys) as parts, running(APP, parts.settings):
        bus = parts.bus
        await _publish_records(bus, tenant, 5)
        assert await wait_for_stored(parts.database, tenant, 5) == 5
        await asyncio.to_thread(fresh_nats.stop)
        await asyncio.to_thread(shutil.rmtree, fresh_nats.store_dir)
        await asyncio.to_thread(fresh_nats.start)

        good, wrong = interaction("user-1"), interaction("user-2")
        good.tenant_id = tenant
        wrong.tenant_id = "some-other-tenant"  # not the subject's tenant: set aside

        async def taken() -> bool:
            """The producer's retry: refused until the audit service has declared AUDIT again."""
            try:
                await publish(bus, good, source=SOURCE)
            except NoStreamResponseError:
                return False
            return True

        assert await _until(taken)
        await bus.publish(subject(tenant), wrong.SerializeToString(), msg_id=wrong.record_id)
        assert await wait_for_stored(parts.database, tenant, 6) == 6

        async def set_aside() -> bool:
            try:
                return await in_stream(bus, REJECTED_STREAM.name, REJECTED_SUBJECT_PREFIX + tenant) == 1
            except NotFoundError:
                return False

        assert await _until(set_aside)
