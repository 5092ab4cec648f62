"""The hash chain over real PostgreSQL: idempotent appends, every kind of tampering detected, erasure and
retention keeping the chain valid, concurrent appends never forking it."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import grpc.aio
import pytest
from sqlalchemy import text

from parapet.audit.v1 import audit_record_pb2, audit_service_pb2, chain_pb2
from parapet.kit.errors import error_details
from services.audit.canonical import prepare, record_hash
from services.audit.retention import drop_expired_bodies
from services.audit.store import insert_rows
from tests.integration.audit.conftest import Audit, interaction, new_tenant

Kind = chain_pb2.ChainBreakKind


async def _chain(audit: Audit, count: int) -> tuple[str, list[audit_service_pb2.RecordResponse]]:
    tenant = new_tenant()
    responses = [await audit.record(tenant, interaction(f"user-{i % 2}")) for i in range(count)]
    return tenant, responses


async def _hash_at(audit: Audit, tenant: str, sequence: int) -> bytes:
    async with audit.database.transaction() as session:
        value = (
            await session.execute(
                text("SELECT record_hash FROM records WHERE tenant_id = :t AND sequence = :s"),
                {"t": tenant, "s": sequence},
            )
        ).scalar_one()
    return bytes(value)


async def _shift(audit: Audit, tenant: str, from_sequence: int, by: int) -> None:
    """Renumber every record from ``from_sequence`` on by ``by`` (two steps: the primary key is checked per row)."""
    await audit.tamper(
        "UPDATE records SET sequence = sequence + 1000000 WHERE tenant_id = :t AND sequence >= :s",
        t=tenant,
        s=from_sequence,
    )
    await audit.tamper(
        "UPDATE records SET sequence = sequence - 1000000 + :by WHERE tenant_id = :t AND sequence > 1000000",
        t=tenant,
        by=by,
    )


def _assert_break(response: audit_service_pb2.VerifyChainResponse, sequence: int, kind: int) -> None:
    assert not response.intact
    assert (response.first_break.sequence, response.first_break.kind) == (sequence, kind), response


async def test_records_chain_in_order_and_are_idempotent(audit: Audit) -> None:
    tenant = new_tenant()
    first = interaction()
    one = await audit.record(tenant, first)
    again = await audit.record(tenant, first)
    two = await audit.record(tenant, interaction())
    assert (one.chain.sequence, one.already_recorded) == (1, False)
    assert one.chain.previous_hash == bytes(32)
    assert (again.chain, again.already_recorded) == (one.chain, True)
    assert two.chain.sequence == 2 and two.chain.previous_hash == one.chain.record_hash

    changed = audit_record_pb2.AuditRecord()
    changed.CopyFrom(first)
    changed.interaction.model = "another-model"
    with pytest.raises(grpc.aio.AioRpcError) as conflict:
        await audit.record(tenant, changed)
    assert conflict.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_details(conflict.value).error_info.reason == "RECORD_CONFLICT"  # type: ignore[union-attr]

    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await audit.record(tenant, audit_record_pb2.AuditRecord(record_id="not-a-uuid"))
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error_details(invalid.value)
    assert details.error_info.reason == "RECORD_INVALID"  # type: ignore[union-attr]
    assert [v.field for v in details.bad_request.field_violations] == ["record.record_id"]  # type: ignore[union-attr]

    result = await audit.verify(tenant)
    assert (result.intact, result.records_verified, result.head_sequence) == (True, 2, 2)


async def test_concurrent_appends_never_fork_the_chain(audit: Audit) -> None:
    tenant = new_tenant()
    responses = await asyncio.gather(*(audit.record(tenant, interaction()) for _ in range(40)))
    assert sorted(r.chain.sequence for r in responses) == list(range(1, 41))
    result = await audit.verify(tenant)
    assert (result.intact, result.records_verified) == (True, 40)


async def test_modified_metadata_is_detected(audit: Audit) -> None:
    tenant, _ = await _chain(audit, 5)
    await audit.tamper(
        "UPDATE records SET metadata = metadata || '\\x00'::bytea WHERE tenant_id = :t AND sequence = 3",
        t=tenant,
    )
    _assert_break(await audit.verify(tenant), 3, Kind.CHAIN_BREAK_KIND_MODIFIED)


async def test_modified_indexed_column_is_detected(audit: Audit) -> None:
    tenant, _ = await _chain(audit, 5)
    await audit.tamper("UPDATE records SET cost_micros = 1 WHERE tenant_id = :t AND sequence = 4", t=tenant)
    _assert_break(await audit.verify(tenant), 4, Kind.CHAIN_BREAK_KIND_MODIFIED)


async def test_modified_body_is_detected(audit: Audit) -> None:
    tenant, _ = await _chain(audit, 5)
    await audit.tamper(
        "UPDATE records SET response = 'No refunds.' WHERE tenant_id = :t AND sequence = 2", t=tenant
    )
    _assert_break(await audit.verify(tenant), 2, Kind.CHAIN_BREAK_KIND_MODIFIED)


async def test_deleted_record_is_detected(audit: Audit) -> None:
    tenant, _ = await _chain(audit, 5)
    await audit.tamper("DELETE FROM records WHERE tenant_id = :t AND sequence = 3", t=tenant)
    _assert_break(await audit.verify(tenant), 3, Kind.CHAIN_BREAK_KIND_DELETED)


async def test_deleted_record_with_renumbering_is_detected(audit: Audit) -> None:
    tenant, _ = await _chain(audit, 6)
    await audit.tamper("DELETE FROM records WHERE tenant_id = :t AND sequence = 3", t=tenant)
    await _shift(audit, tenant, 4, -1)
    await audit.tamper("UPDATE chain_heads SET sequence = 5 WHERE tenant_id = :t", t=tenant)
    _assert_break(await audit.verify(tenant), 3, Kind.CHAIN_BREAK_KIND_DELETED)


async def test_inserted_record_is_detected(audit: Audit) -> None:
    tenant, _ = await _chain(audit, 5)
    # A well-formed forged record, linked to record 2 and hashed correctly, slipped in at 3.
    await _shift(audit, tenant, 3, 1)
    forged = prepare(interaction("intruder"), tenant)
    previous = await _hash_at(audit, tenant, 2)
    async with audit.database.transaction() as session:
        await insert_rows(
            session, tenant, [(forged, 3, previous, record_hash(3, previous, forged.metadata_sha256))]
        )
    _assert_break(await audit.verify(tenant), 3, Kind.CHAIN_BREAK_KIND_INSERTED)


async def test_a_row_past_the_head_is_detected(audit: Audit) -> None:
    """The scan once stopped at the head (or the newest checkpoint): a row the owner slipped in far past it, with
    garbage hashes, left the chain intact while QueryInteractions returned it."""
    tenant, _ = await _chain(audit, 3)
    await audit.checkpoint()
    await audit.tamper(
        "INSERT INTO records (tenant_id, sequence, record_id, kind, create_time, metadata, previous_hash,"
        " record_hash, prompt)"
        " SELECT tenant_id, sequence + 1000, gen_random_uuid(), kind, create_time, metadata, :junk, :junk,"
        " 'forged' FROM records WHERE tenant_id = :t AND sequence = 2",
        t=tenant,
        junk=b"\x01" * 32,
    )
    result = await audit.verify(tenant)
    _assert_break(result, 1002, Kind.CHAIN_BREAK_KIND_INSERTED)
    assert result.first_break.record_id and result.records_verified == 3 and result.head_sequence == 3
    # A range that stops short of the head does not reach it; one up to the head does.
    assert (await audit.verify(tenant, 1, 2)).intact
    _assert_break(await audit.verify(tenant, 2, 3), 1002, Kind.CHAIN_BREAK_KIND_INSERTED)


async def test_reordered_records_are_detected(audit: Audit) -> None:
    tenant, _ = await _chain(audit, 5)
    await audit.tamper(
        "UPDATE records SET sequence = sequence + 1000000 WHERE tenant_id = :t AND sequence IN (3, 4)",
        t=tenant,
    )
    await audit.tamper(
        "UPDATE records SET sequence = CASE sequence WHEN 1000003 THEN 4 ELSE 3 END"
        " WHERE tenant_id = :t AND sequence > 1000000",
        t=tenant,
    )
    _assert_break(await audit.verify(tenant), 3, Kind.CHAIN_BREAK_KIND_REORDERED)


async def test_truncation_after_a_checkpoint_is_detected(audit: Audit) -> None:
    tenant, _ = await _chain(audit, 5)
    assert await audit.checkpoint() >= 1
    intact = await audit.verify(tenant)
    assert intact.intact and intact.latest_checkpoint.sequence == 5
    assert intact.latest_checkpoint.key_id == audit.signer.key_id
    # Cut the tail and make the head agree: without the checkpoint this would look like a shorter chain.
    head = await _hash_at(audit, tenant, 3)
    await audit.tamper("DELETE FROM records WHERE tenant_id = :t AND sequence > 3", t=tenant)
    await audit.tamper(
        "UPDATE chain_heads SET sequence = 3, head_hash = :h WHERE tenant_id = :t", t=tenant, h=head
    )
    _assert_break(await audit.verify(tenant), 4, Kind.CHAIN_BREAK_KIND_TRUNCATED)


async def test_rewritten_and_rehashed_chain_fails_its_checkpoint(audit: Audit) -> None:
    tenant, _ = await _chain(audit, 5)
    await audit.checkpoint()
    # The attacker edits record 3 (its metadata and the indexed column) and recomputes every hash after it,
    # and the head: only the signed checkpoint (which they cannot re-sign) still remembers the original head.
    await _rewrite_and_rehash(
        audit, tenant, 3, lambda original: original.replace(b"gpt-test", b"gpt-fake"), model="gpt-fake"
    )
    result = await audit.verify(tenant)
    assert not result.intact
    assert result.first_break.kind == Kind.CHAIN_BREAK_KIND_MODIFIED
    assert 3 <= result.first_break.sequence <= 5


async def _rewrite_and_rehash(
    audit: Audit,
    tenant: str,
    sequence: int,
    forge: Callable[[bytes], bytes],
    *,
    model: str | None = None,
) -> None:
    """Replace record ``sequence``'s metadata with ``forge`` of it (and its ``model`` column, to match an edited
    model) and recompute its hash, every later one and the head's, as an attacker with database access would."""
    async with audit.database.transaction() as session:
        if model is not None:
            await session.execute(
                text("UPDATE records SET model = :model WHERE tenant_id = :t AND sequence = :s"),
                {"model": model, "t": tenant, "s": sequence},
            )
        rows = (
            await session.execute(
                text("SELECT sequence, metadata FROM records WHERE tenant_id = :t ORDER BY sequence"),
                {"t": tenant},
            )
        ).all()
        previous = bytes(32)
        for row in rows:
            stored = forge(bytes(row.metadata)) if row.sequence == sequence else bytes(row.metadata)
            digest = record_hash(int(row.sequence), previous, hashlib.sha256(stored).digest())
            await session.execute(
                text(
                    "UPDATE records SET metadata = :m, previous_hash = :p, record_hash = :h"
                    " WHERE tenant_id = :t AND sequence = :s"
                ),
                {"m": stored, "p": previous, "h": digest, "t": tenant, "s": row.sequence},
            )
            previous = digest
        await session.execute(
            text("UPDATE chain_heads SET head_hash = :h WHERE tenant_id = :t"), {"h": previous, "t": tenant}
        )


def _far_future(metadata: bytes) -> bytes:
    """``metadata`` with a create_time no Timestamp may hold (after the year 9999)."""
    record = audit_record_pb2.AuditRecord.FromString(metadata)
    record.create_time.seconds = 2**40
    return record.SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    "forge",
    [lambda _: b"\xff\xff\xff not protobuf", _far_future],
    ids=["undecodable", "create_time_out_of_range"],
)
async def test_rehashed_metadata_no_append_could_write_is_reported_modified(
    audit: Audit, forge: Callable[[bytes], bytes]
) -> None:
    """Until 2026-12-06 metadata that does not decode, or decodes to a time no Timestamp holds, made VerifyChain
    fail INTERNAL once its hashes were recomputed, checkpoint or not: the tampering was never reported."""
    tenant, _ = await _chain(audit, 5)
    await audit.checkpoint()
    await _rewrite_and_rehash(audit, tenant, 3, forge)
    result = await audit.verify(tenant)
    _assert_break(result, 3, Kind.CHAIN_BREAK_KIND_MODIFIED)
    assert result.records_verified == 2


async def test_moderation_summaries_verify_whichever_release_named_their_enums(audit: Audit) -> None:
    """A producer on a newer contract may report a moderation category (or action) this release does not know: the
    record is kept as it came, its summary key written with the number ("99:ACTION_MASK"). Once the audit service
    is upgraded and knows the name, it derives "CATEGORY_NEW:ACTION_MASK" from the same metadata; until 2026-12-06
    VerifyChain then reported every such record MODIFIED, a tampering nobody did. The key as an older release wrote
    it (numbers for what it did not know) must verify; a count that differs must not."""
    tenant = new_tenant()
    record = interaction()
    record.interaction.moderation_findings.add(
        category=3, action=3, count=2
    )  # CATEGORY_PII_EMAIL, ACTION_MASK
    record.interaction.moderation_findings.add(category=99, action=5, count=1)  # unknown to this release
    await audit.record(tenant, record)
    async with audit.database.transaction() as session:
        written = (
            await session.execute(
                text("SELECT moderation_summary FROM records WHERE tenant_id = :t"), {"t": tenant}
            )
        ).scalar_one()
    assert written == {"CATEGORY_PII_EMAIL:ACTION_MASK": 2, "99:ACTION_BLOCK": 1}
    assert (await audit.verify(tenant)).intact

    # What a release that knew neither CATEGORY_PII_EMAIL nor ACTION_MASK wrote for this very record.
    older = '{"3:3": 2, "99:ACTION_BLOCK": 1}'
    await audit.tamper(
        "UPDATE records SET moderation_summary = CAST(:s AS jsonb) WHERE tenant_id = :t", s=older, t=tenant
    )
    result = await audit.verify(tenant)
    assert (result.intact, result.records_verified) == (True, 1), result

    edited = [
        '{"3:3": 5, "99:ACTION_BLOCK": 1}',
        '{"3:3": 2}',
        '{"3:3": "2", "99:ACTION_BLOCK": 1}',
        '[["3:3", 2], ["99:ACTION_BLOCK", 1]]',
        '{"' + "9" * 5000 + ':3": 2, "99:ACTION_BLOCK": 1}',
    ]
    for summary in edited:
        await audit.tamper(
            "UPDATE records SET moderation_summary = CAST(:s AS jsonb) WHERE tenant_id = :t",
            s=summary,
            t=tenant,
        )
        _assert_break(await audit.verify(tenant), 1, Kind.CHAIN_BREAK_KIND_MODIFIED)


async def test_forged_checkpoint_is_detected(audit: Audit) -> None:
    tenant, _ = await _chain(audit, 3)
    await audit.checkpoint()
    await audit.tamper("UPDATE checkpoints SET sequence = 2 WHERE tenant_id = :t", t=tenant)
    _assert_break(await audit.verify(tenant), 2, Kind.CHAIN_BREAK_KIND_CHECKPOINT_INVALID)


async def test_verify_range_and_bad_range(audit: Audit) -> None:
    tenant, _ = await _chain(audit, 6)
    part = await audit.verify(tenant, 3, 5)
    assert (part.intact, part.records_verified, part.head_sequence) == (True, 3, 6)
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await audit.verify(tenant, 5, 2)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(bad.value).error_info.reason == "CHAIN_RANGE_INVALID"  # type: ignore[union-attr]


async def test_erasure_drops_a_users_bodies_and_the_chain_still_verifies(audit: Audit) -> None:
    tenant, _ = await _chain(audit, 6)  # users user-0 and user-1, three records each
    await audit.checkpoint()
    erase = audit_service_pb2.EraseRequest(user_id="user-0", reason="GDPR ticket 42")
    erased = await audit.stub.Erase(erase, metadata=audit.metadata(tenant), timeout=10)
    assert erased.erased_count == 3
    again = await audit.stub.Erase(erase, metadata=audit.metadata(tenant), timeout=10)
    assert again.erased_count == 0

    records = [
        record
        async for batch in audit.stub.QueryInteractions(
            audit_service_pb2.QueryInteractionsRequest(), metadata=audit.metadata(tenant), timeout=10
        )
        for record in batch.records
    ]
    assert len(records) == 6
    for record in records:
        body = record.interaction.body
        assert body.prompt_sha256 and body.response_sha256  # hashes stay
        erased_user = record.interaction.user_id == "user-0"
        assert (body.prompt == "", body.HasField("erase_time")) == (erased_user, erased_user)
    result = await audit.verify(tenant)
    # Six interactions and the two AdminActions recording the erasures.
    assert (result.intact, result.records_verified) == (True, 8)


async def test_retention_drops_expired_bodies_and_the_chain_still_verifies(audit: Audit) -> None:
    tenant = new_tenant()
    old = interaction(retention_days=3)
    old.create_time.FromDatetime(datetime.now(UTC) - timedelta(days=2))
    fresh = interaction(retention_days=30)
    await audit.record(tenant, old)
    await audit.record(tenant, fresh)
    # The job as it runs a day and a half later: the old record's bodies have had their three days.
    assert await drop_expired_bodies(audit.database, datetime.now(UTC) + timedelta(hours=36)) >= 1
    async with audit.database.transaction() as session:
        rows = (
            await session.execute(
                text("SELECT record_id::text AS id, prompt, erase_time FROM records WHERE tenant_id = :t"),
                {"t": tenant},
            )
        ).all()
    state = {row.id: (row.prompt is None, row.erase_time is not None) for row in rows}
    assert state == {old.record_id: (True, True), fresh.record_id: (False, False)}
    assert (await audit.verify(tenant)).intact


async def test_erase_needs_its_permission(audit: Audit) -> None:
    tenant = new_tenant()
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await audit.stub.Erase(
            audit_service_pb2.EraseRequest(user_id="user-0"),
            metadata=audit.metadata(tenant, roles=("member",)),
            timeout=10,
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_details(denied.value).error_info.metadata["permission"] == "audit.erase"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        # No record can name such a user (an id over MAX_ID_BYTES is refused), and its erasure marker could not be
        # indexed: Erase answered INTERNAL.
        (audit_service_pb2.EraseRequest(user_id=secrets.token_urlsafe(6000)), "user_id"),
        # A reason that makes the AdminAction larger than a record may be: Erase cleared the bodies, then failed
        # to record who did it and why.
        (audit_service_pb2.EraseRequest(user_id="user-0", reason="x" * (3 << 20)), "reason"),
    ],
)
async def test_erase_refuses_what_it_could_not_record_before_it_erases_anything(
    audit: Audit, request_: audit_service_pb2.EraseRequest, field: str
) -> None:
    tenant, _ = await _chain(audit, 2)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await audit.stub.Erase(request_, metadata=audit.metadata(tenant), timeout=10)
    details = error_details(refused.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details.bad_request.field_violations] == [field]  # type: ignore[union-attr]
    async with audit.database.transaction() as session:
        bodies = await session.execute(
            text("SELECT count(*) FROM records WHERE tenant_id = :t AND prompt IS NOT NULL"), {"t": tenant}
        )
        assert bodies.scalar_one() == 2


async def test_a_record_past_its_retention_is_stored_without_its_bodies(audit: Audit) -> None:
    """A record that reaches the service after its bodies' retention ended (it waited in the AUDIT stream or a
    producer's outbox while audit was down) was stored with them, readable until the retention job's next run."""
    tenant = new_tenant()
    late = interaction(retention_days=1, created=datetime.now(UTC) - timedelta(days=2))
    first = await audit.record(tenant, late)
    again = await audit.record(tenant, late)  # a redelivery is the same record, not a conflict
    assert again.already_recorded and again.chain == first.chain
    messages = audit.stub.QueryInteractions(
        audit_service_pb2.QueryInteractionsRequest(), metadata=audit.metadata(tenant), timeout=10
    )
    [record] = [r async for m in messages for r in m.records]
    body = record.interaction.body
    assert (body.prompt, body.response, body.HasField("erase_time")) == ("", "", True)
    assert body.prompt_sha256  # what was said can still be proved by whoever holds a copy
    assert (await audit.verify(tenant)).intact
