"""Reading the log: audit.read required, filters and paging, JSON Lines export, and another tenant's
records invisible whatever the request says."""

from __future__ import annotations

import json

import grpc
import grpc.aio
import pytest
from sqlalchemy import text

from parapet.audit.v1 import audit_record_pb2, audit_service_pb2
from parapet.auth.v1 import tenant_policy_pb2
from parapet.kit.errors import error_details
from parapet.kit.identity import Principal
from services.audit.query import encode_page_token
from services.audit.scope import tenant_scope
from tests.integration.audit.conftest import Audit, interaction, new_tenant


async def _query(
    audit: Audit, tenant: str, request: audit_service_pb2.QueryInteractionsRequest, **kwargs: object
) -> tuple[list[audit_record_pb2.AuditRecord], str]:
    records: list[audit_record_pb2.AuditRecord] = []
    token = ""
    metadata = kwargs.get("metadata") or audit.metadata(tenant)
    async for batch in audit.stub.QueryInteractions(request, metadata=metadata, timeout=10):
        records.extend(batch.records)
        token = batch.next_page_token or token
    return records, token


async def _export(
    audit: Audit, tenant: str, filter_: audit_service_pb2.InteractionFilter
) -> list[dict[str, object]]:
    data = b""
    async for chunk in audit.stub.ExportInteractions(
        audit_service_pb2.ExportInteractionsRequest(filter=filter_),
        metadata=audit.metadata(tenant),
        timeout=10,
    ):
        assert chunk.data.endswith(b"\n")
        data += chunk.data
    return [json.loads(line) for line in data.decode().splitlines()]


async def test_another_tenants_records_are_invisible_even_with_crafted_filters(audit: Audit) -> None:
    victim, attacker = new_tenant(), new_tenant()
    secret = interaction("victim-user", prompt="victim secret", request_id="victim-request")
    await audit.record(victim, secret)
    await audit.record(attacker, interaction("attacker-user"))

    crafted = [
        audit_service_pb2.InteractionFilter(),
        audit_service_pb2.InteractionFilter(user_id="victim-user"),
        audit_service_pb2.InteractionFilter(request_id="victim-request"),
        audit_service_pb2.InteractionFilter(user_id="' OR tenant_id <> '' --"),
        audit_service_pb2.InteractionFilter(api_key_id="key-1", model="gpt-test", feature="support"),
    ]
    for filter_ in crafted:
        records, _ = await _query(audit, attacker, audit_service_pb2.QueryInteractionsRequest(filter=filter_))
        assert {r.tenant_id for r in records} <= {attacker}, filter_
        assert secret.record_id not in {r.record_id for r in records}
        exported = await _export(audit, attacker, filter_)
        assert {line["tenantId"] for line in exported} <= {attacker}
    # A page token pointing anywhere still reads only the caller's rows.
    token = encode_page_token(
        secret.create_time.ToDatetime().replace(year=2000), 0, audit_service_pb2.InteractionFilter()
    )
    records, _ = await _query(audit, attacker, audit_service_pb2.QueryInteractionsRequest(page_token=token))
    assert {r.tenant_id for r in records} == {attacker}
    # The attacker's chain is theirs alone; the victim's stays whole.
    assert (await audit.verify(attacker)).records_verified == 1
    assert (await audit.verify(victim)).records_verified == 1
    # And row-level security holds at the database, not just in the SQL the service writes.
    async with tenant_scope(audit.database, attacker) as session:
        seen = (await session.execute(text("SELECT DISTINCT tenant_id FROM records"))).scalars().all()
        heads = (await session.execute(text("SELECT tenant_id FROM chain_heads"))).scalars().all()
    assert list(seen) == [attacker] and list(heads) == [attacker]


async def test_reading_needs_audit_read(audit: Audit) -> None:
    tenant = new_tenant()
    member = audit.metadata(tenant, roles=("member",))
    scoped = audit.metadata(tenant, roles=("audit.read",))
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await _query(audit, tenant, audit_service_pb2.QueryInteractionsRequest(), metadata=member)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_details(denied.value).error_info.reason == "PERMISSION_MISSING"  # type: ignore[union-attr]
    with pytest.raises(grpc.aio.AioRpcError) as verify_denied:
        await audit.stub.VerifyChain(audit_service_pb2.VerifyChainRequest(), metadata=member, timeout=5)
    assert verify_denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as record_denied:
        await audit.stub.Record(
            audit_service_pb2.RecordRequest(record=interaction()), metadata=member, timeout=5
        )
    assert record_denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    records, _ = await _query(audit, tenant, audit_service_pb2.QueryInteractionsRequest(), metadata=scoped)
    assert records == []


async def test_filters_paging_and_export(audit: Audit) -> None:
    tenant = new_tenant()
    for i in range(7):
        await audit.record(
            tenant, interaction("alice" if i % 2 == 0 else "bob", status_code=13 if i == 3 else 0)
        )
    await audit.record(
        tenant, interaction("carol", retention=tenant_policy_pb2.BODY_RETENTION_HASH_ONLY, model="other")
    )

    alice = audit_service_pb2.InteractionFilter(user_id="alice")
    page, token = await _query(
        audit, tenant, audit_service_pb2.QueryInteractionsRequest(filter=alice, page_size=3)
    )
    assert len(page) == 3 and token
    rest, last = await _query(
        audit, tenant, audit_service_pb2.QueryInteractionsRequest(filter=alice, page_size=3, page_token=token)
    )
    assert len(rest) == 1 and last == ""
    sequences = [r.chain.sequence for r in page + rest]
    assert sequences == sorted(sequences) and len(set(sequences)) == 4
    assert {r.interaction.user_id for r in page + rest} == {"alice"}

    errors, _ = await _query(
        audit,
        tenant,
        audit_service_pb2.QueryInteractionsRequest(
            filter=audit_service_pb2.InteractionFilter(only_errors=True)
        ),
    )
    assert [r.interaction.status_code for r in errors] == [13]

    [carol] = (
        await _query(
            audit,
            tenant,
            audit_service_pb2.QueryInteractionsRequest(
                filter=audit_service_pb2.InteractionFilter(model="other")
            ),
        )
    )[0]
    assert carol.interaction.body.prompt == "" and len(carol.interaction.body.prompt_sha256) == 64

    with pytest.raises(grpc.aio.AioRpcError) as bad_token:
        await _query(
            audit,
            tenant,
            audit_service_pb2.QueryInteractionsRequest(
                filter=audit_service_pb2.InteractionFilter(user_id="bob"), page_token=token
            ),
        )
    assert error_details(bad_token.value).error_info.reason == "PAGE_TOKEN_INVALID"  # type: ignore[union-attr]

    lines = await _export(audit, tenant, audit_service_pb2.InteractionFilter())
    assert len(lines) == 8
    assert lines[0]["interaction"]["body"]["prompt"] == "What is our refund policy?"  # type: ignore[index]
    assert [int(line["chain"]["sequence"]) for line in lines] == list(range(1, 9))  # type: ignore[index]


async def test_permissions_auth_resolved_decide_and_admin_stands_for_audit_write(audit: Audit) -> None:
    """Tokens auth issues carry the permissions it resolved; a custom role granted audit.read reads, and what the
    token does not list is refused even to a role named like it. Record takes a service or an admin."""
    tenant = new_tenant()

    def caller(roles: tuple[str, ...], permissions: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        return audit.keys.metadata(Principal(tenant, "someone", roles=roles, permissions=permissions))

    reader = caller(("compliance",), ("audit.read", "chat"))
    named = caller(("audit.read",), ("chat",))  # a role *named* like the permission, granted nothing by it
    admin = caller(("admin",), ("admin", "audit.erase", "audit.read", "chat"))
    record = audit_service_pb2.RecordRequest(record=interaction())
    assert (await audit.stub.Record(record, metadata=admin, timeout=5)).chain.sequence == 1
    records, _ = await _query(audit, tenant, audit_service_pb2.QueryInteractionsRequest(), metadata=reader)
    assert len(records) == 1
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await _query(audit, tenant, audit_service_pb2.QueryInteractionsRequest(), metadata=named)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await audit.stub.Record(record, metadata=reader, timeout=5)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_time_window_that_ends_before_it_starts_is_refused(audit: Audit) -> None:
    """Until 2026-12-06 a window with end_time before start_time matched nothing and answered an empty page, as
    if the tenant had no records then: a caller who swapped the two bounds was told so by nothing."""
    tenant = new_tenant()
    await audit.record(tenant, interaction())
    swapped = audit_service_pb2.InteractionFilter()
    swapped.start_time.GetCurrentTime()
    swapped.end_time.FromSeconds(swapped.start_time.seconds - 3600)
    refusals = []
    with pytest.raises(grpc.aio.AioRpcError) as queried:
        await _query(audit, tenant, audit_service_pb2.QueryInteractionsRequest(filter=swapped))
    refusals.append(queried.value)
    with pytest.raises(grpc.aio.AioRpcError) as exported:
        await _export(audit, tenant, swapped)
    refusals.append(exported.value)
    for refused in refusals:
        details = error_details(refused)
        assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_INVALID")
        assert [v.field for v in details.bad_request.field_violations] == ["filter.end_time"]  # type: ignore[union-attr]
    # An empty window (end equal to start: the end is exclusive) is a question with an empty answer, not an error;
    # and the record is there for the window in the right order.
    empty = audit_service_pb2.InteractionFilter()
    empty.start_time.CopyFrom(swapped.start_time)
    empty.end_time.CopyFrom(swapped.start_time)
    assert (await _query(audit, tenant, audit_service_pb2.QueryInteractionsRequest(filter=empty)))[0] == []
    window = audit_service_pb2.InteractionFilter(start_time=swapped.end_time)
    window.end_time.FromSeconds(swapped.start_time.seconds + 3600)
    assert (
        len((await _query(audit, tenant, audit_service_pb2.QueryInteractionsRequest(filter=window)))[0]) == 1
    )
