"""Figures no interaction can have, and identifiers longer than can be indexed, are refused on both paths: Record answers INVALID_ARGUMENT RECORD_INVALID naming
the field, and the stream consumer sets such a record aside. A latency of 2^60 seconds (outside protobuf's
Duration range) once made Record INTERNAL, and a negative token count was chained for ever."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import grpc
import grpc.aio
import pytest

from parapet.audit.v1 import audit_record_pb2
from parapet.events.audit import REJECTED_REASON_HEADER, REJECTED_STREAM, REJECTED_SUBJECT_PREFIX, publish
from parapet.kit.bus import Bus
from parapet.kit.errors import error_details
from tests.integration.audit.conftest import Audit, in_stream, interaction, new_tenant, stored, wait_for_count

Change = Callable[[audit_record_pb2.AuditRecord], None]


def _latency_overflow(record: audit_record_pb2.AuditRecord) -> None:
    record.interaction.latency.seconds = 2**60


def _negative_tokens(record: audit_record_pb2.AuditRecord) -> None:
    record.interaction.usage.prompt_tokens = -5


def _negative_cost(record: audit_record_pb2.AuditRecord) -> None:
    record.interaction.cost.amount_micros = -1


# Random text does not compress: an index entry holding it is above PostgreSQL's limit for a btree entry (2,704
# bytes). Before, Record answered INTERNAL, and the stream consumer redelivered the batch for ever (the error is no
# data exception), every tenant's records waiting behind it.
_UNINDEXABLE = secrets.token_urlsafe(6000)


def _long_user_id(record: audit_record_pb2.AuditRecord) -> None:
    record.interaction.user_id = _UNINDEXABLE


def _long_request_id(record: audit_record_pb2.AuditRecord) -> None:
    record.interaction.request_id = _UNINDEXABLE


def _long_model(record: audit_record_pb2.AuditRecord) -> None:
    # The model is in the time index too (INCLUDE, for index-only cost rollups), under the same limit.
    record.interaction.model = _UNINDEXABLE


CASES: list[tuple[Change, str]] = [
    (_latency_overflow, "record.interaction.latency"),
    (_negative_tokens, "record.interaction.usage.prompt_tokens"),
    (_negative_cost, "record.interaction.cost.amount_micros"),
    (_long_user_id, "record.interaction.user_id"),
    (_long_request_id, "record.interaction.request_id"),
    (_long_model, "record.interaction.model"),
]


@pytest.mark.parametrize(("change", "field"), CASES)
async def test_record_refuses_impossible_figures_with_the_field(
    audit: Audit, change: Change, field: str
) -> None:
    tenant = new_tenant()
    record = interaction()
    change(record)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await audit.record(tenant, record)
    details = error_details(refused.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "RECORD_INVALID")
    assert [v.field for v in details.bad_request.field_violations] == [field]  # type: ignore[union-attr]
    assert await stored(audit.database, tenant) == 0


async def test_the_consumer_sets_aside_records_with_impossible_figures(audit: Audit, nats_url: str) -> None:
    tenant = new_tenant()
    bad = []
    for change, _ in CASES:
        record = interaction()
        change(record)
        bad.append(record)
    good = interaction()
    bus = await Bus.connect(nats_url)
    try:
        for record in [*bad, good]:
            record.tenant_id = tenant
            await publish(bus, record, source="/parapet/gateway")
        rejected = REJECTED_SUBJECT_PREFIX + tenant
        assert await wait_for_count(lambda: in_stream(bus, REJECTED_STREAM.name, rejected), len(bad)) == len(
            bad
        )
        assert await wait_for_count(lambda: stored(audit.database, tenant), 1) == 1
        aside = await bus.jetstream.pull_subscribe(rejected, stream=REJECTED_STREAM.name, durable=None)
        try:
            messages = await aside.fetch(len(bad), timeout=10)
        finally:
            await aside.unsubscribe()
        reasons = {
            audit_record_pb2.AuditRecord.FromString(m.data).record_id: (m.headers or {})[
                REJECTED_REASON_HEADER
            ]
            for m in messages
        }
        assert set(reasons) == {r.record_id for r in bad}
        for record, (_, field) in zip(bad, CASES, strict=True):
            assert field in reasons[record.record_id], reasons
    finally:
        await bus.close()
    assert (await audit.verify(tenant)).records_verified == 1
