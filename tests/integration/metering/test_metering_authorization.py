"""Authorization and isolation of metering's and billing's RPCs with tokens as auth issues them (resolved
permissions): the tenant only from the token, usage.read narrowed by a key's scopes, page tokens bound to
tenant and caller, and reservations of another tenant or another user neither honoured nor revealed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2

from parapet.billing.v1 import billing_service_pb2 as bpb
from parapet.kit.identity import Principal
from parapet.kit.testing import PAGE_TOKEN_REFUSED, TestKeys, refusal
from parapet.metering.v1 import metering_service_pb2 as pb
from parapet.metering.v1 import reservation_pb2, usage_report_pb2
from parapet.usage.v1 import token_usage_pb2
from tests.integration.metering.conftest import Metering
from tests.integration.metering.metering_support import new_tenant, suite, usd, write_policies

ACTIVE = reservation_pb2.RESERVATION_STATE_ACTIVE
RELEASED = reservation_pb2.RESERVATION_STATE_RELEASED
SETTLED = reservation_pb2.RESERVATION_STATE_SETTLED
EPOCH = timestamp_pb2.Timestamp(seconds=0)
NOT_FOUND: tuple[grpc.StatusCode, str, list[str]] = (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND", [])


def issued(
    keys: TestKeys, tenant: str, subject: str, *permissions: str, key: str = "key-1"
) -> tuple[tuple[str, str], ...]:
    """Call metadata of a token as auth issues it for an API key: the permissions it resolved."""
    principal = Principal(
        tenant_id=tenant,
        subject=subject,
        roles=("admin",),  # the name must not matter once permissions are resolved
        credential_type="api_key",
        api_key_id=key,
        permissions=permissions,
    )
    return keys.metadata(principal)


def settle_request(request_id: str, reservation_id: str = "", tokens: int = 10) -> pb.SettleRequest:
    return pb.SettleRequest(
        reservation_id=reservation_id,
        request_id=request_id,
        model="m",
        provider="p",
        usage=token_usage_pb2.TokenUsage(prompt_tokens=tokens, completion_tokens=tokens),
        cost=usd(tokens * 100),
    )


async def _release(metering: Metering, metadata: object, reservation_id: str) -> pb.ReleaseResponse:
    return await metering.stub.Release(  # type: ignore[no-any-return]
        pb.ReleaseRequest(reservation_id=reservation_id), metadata=metadata
    )


async def test_usage_of_a_key_scoped_to_chat_is_its_users_own_and_no_one_elses(
    metering: Metering, keys: TestKeys
) -> None:
    tenant, other = new_tenant(), new_tenant()
    for t in (tenant, other):
        for user in ("alice", "bob"):
            await metering.stub.Settle(settle_request(f"{t}-{user}"), metadata=issued(keys, t, user, "chat"))
    # An admin's key scoped to chat: auth resolved "chat" alone, so the roles' admin does not count.
    chat_key = issued(keys, tenant, "alice", "chat")
    by_user = pb.GetUsageRequest(start_time=EPOCH, group_by=[usage_report_pb2.USAGE_DIMENSION_USER])
    own = await metering.stub.GetUsage(by_user, metadata=chat_key)
    assert [(a.user_id, a.request_count) for a in own.aggregates] == [("alice", 1)]
    assert own.total.request_count == 1
    for user_id in ("bob", "nobody"):
        assert await refusal(
            metering.stub.GetUsage(pb.GetUsageRequest(start_time=EPOCH, user_id=user_id), metadata=chat_key)
        ) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_MISSING", [])
    # usage.read sees the tenant's users, never another tenant's (the tenant is the token's).
    reader = issued(keys, tenant, "carol", "usage.read")
    everyone = await metering.stub.GetUsage(by_user, metadata=reader)
    assert [(a.user_id, a.request_count) for a in everyone.aggregates] == [("alice", 1), ("bob", 1)]


async def test_a_usage_page_token_serves_only_its_tenant_and_caller(
    metering: Metering, keys: TestKeys
) -> None:
    tenant, other = new_tenant(), new_tenant()
    for t in (tenant, other):
        for i in range(3):
            await metering.stub.Settle(
                settle_request(f"r{i}", tokens=i + 1), metadata=issued(keys, t, f"u{i}", "chat")
            )
    request = pb.GetUsageRequest(
        start_time=EPOCH, group_by=[usage_report_pb2.USAGE_DIMENSION_USER], page_size=1
    )
    first = await metering.stub.GetUsage(request, metadata=issued(keys, tenant, "carol", "usage.read"))
    assert first.next_page_token
    request.page_token = first.next_page_token
    for metadata in (
        issued(keys, other, "carol", "usage.read"),  # the same subject in another tenant
        issued(keys, tenant, "dave", "usage.read"),  # another caller of the tenant
    ):
        assert await refusal(metering.stub.GetUsage(request, metadata=metadata)) == PAGE_TOKEN_REFUSED


async def test_another_tenants_reservation_is_not_found_and_left_alone(
    metering: Metering, keys: TestKeys
) -> None:
    victim, attacker = new_tenant(), new_tenant()
    owner = issued(keys, victim, "alice", "chat")
    intruder = issued(keys, attacker, "alice", "chat")  # same subject and key id, another tenant
    held = await metering.stub.Reserve(
        pb.ReserveRequest(request_id="r1", estimated_tokens=50), metadata=owner
    )
    reservation_id = held.reservation.reservation_id
    unknown = "00000000-0000-4000-8000-000000000000"
    assert await refusal(_release(metering, intruder, reservation_id)) == NOT_FOUND
    assert await refusal(_release(metering, intruder, unknown)) == NOT_FOUND
    # Settling with its id and request id charges the intruder's own tenant and leaves the reservation active.
    settled = await metering.stub.Settle(settle_request("r1", reservation_id), metadata=intruder)
    assert not settled.HasField("reservation")
    # A Reserve of the same request id in the intruder's tenant is the intruder's own reservation.
    own = await metering.stub.Reserve(
        pb.ReserveRequest(request_id="r1", estimated_tokens=5), metadata=intruder
    )
    assert own.reservation.reservation_id != reservation_id
    assert (await _release(metering, owner, reservation_id)).reservation.state == RELEASED


async def test_another_users_reservation_is_neither_honoured_nor_revealed(
    metering: Metering, keys: TestKeys
) -> None:
    """Reservations belong to the user who made them (the gateway settles and releases with that user's
    token): another user of the tenant who names one gets what a reservation that does not exist gets."""
    tenant = new_tenant()
    alice = issued(keys, tenant, "alice", "chat")
    bob = issued(keys, tenant, "bob", "chat", key="key-2")
    held = await metering.stub.Reserve(
        pb.ReserveRequest(request_id="a-1", estimated_tokens=50), metadata=alice
    )
    reservation_id = held.reservation.reservation_id
    unknown = "00000000-0000-4000-8000-000000000000"
    # Release: NOT_FOUND, exactly as for an id that does not exist; alice's hold stays.
    assert (
        await refusal(_release(metering, bob, reservation_id))
        == await refusal(_release(metering, bob, unknown))
        == NOT_FOUND
    )
    # Settle of his own request naming her reservation (or an unknown one): charged as if no reservation were
    # known, and repeated, it still tells him nothing of hers.
    for request in (settle_request("b-1", reservation_id), settle_request("b-2", unknown)):
        for _ in range(2):
            settled = await metering.stub.Settle(request, metadata=bob)
            assert not settled.HasField("reservation"), request.request_id
    # Reserve with her request id does not hand him her reservation, and holds nothing for him.
    refused = await refusal(
        metering.stub.Reserve(pb.ReserveRequest(request_id="a-1", estimated_tokens=5), metadata=bob)
    )
    assert refused[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_CONFLICT")
    # Settle of her request id, naming no reservation, hers, or an unknown one, does not settle it either (a
    # ledger row under her request id would make her own Settle a conflict and leave her hold in place).
    for named in ("", reservation_id, unknown):
        assert await refusal(metering.stub.Settle(settle_request("a-1", named), metadata=bob)) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "SETTLEMENT_CONFLICT",
            [],
        ), named
    # Her reservation is untouched: she settles it herself.
    mine = await metering.stub.Settle(settle_request("a-1", reservation_id), metadata=alice)
    assert mine.reservation.state == SETTLED
    # And once settled, his Settle of her request id with her figures is no repeat of hers.
    assert (await refusal(metering.stub.Settle(settle_request("a-1"), metadata=bob)))[1] == (
        "SETTLEMENT_CONFLICT"
    )
    # Nor of a settlement of hers that had no reservation at all (the ledger row is all there is).
    await metering.stub.Settle(settle_request("a-9"), metadata=alice)
    assert (await refusal(metering.stub.Settle(settle_request("a-9"), metadata=bob)))[1] == (
        "SETTLEMENT_CONFLICT"
    )


async def test_billing_needs_usage_read_and_reads_only_the_tokens_tenant(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str
) -> None:
    tenant, other = new_tenant(), new_tenant()
    policy_file = write_policies(tmp_path / "policies.json", {})
    async with suite(tmp_path, keys, database_url, nats_url, policy_file) as (metering, billing):
        await metering.Settle(settle_request("r1"), metadata=issued(keys, tenant, "alice", "chat"))
        for call in (
            billing.ListRollups(bpb.ListRollupsRequest(), metadata=issued(keys, tenant, "a", "chat")),
            billing.GetInvoicePreview(
                bpb.GetInvoicePreviewRequest(), metadata=issued(keys, tenant, "a", "chat", "documents.read")
            ),
        ):
            assert await refusal(call) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_MISSING", [])
        reader = issued(keys, tenant, "carol", "usage.read")
        for _ in range(100):  # billing consumes the event from NATS
            if (await billing.ListRollups(bpb.ListRollupsRequest(), metadata=reader)).rollups:
                break
            await asyncio.sleep(0.1)
        assert len((await billing.ListRollups(bpb.ListRollupsRequest(), metadata=reader)).rollups) == 1
        outsider = issued(keys, other, "carol", "usage.read", "admin")
        assert list((await billing.ListRollups(bpb.ListRollupsRequest(), metadata=outsider)).rollups) == []
        preview = await billing.GetInvoicePreview(bpb.GetInvoicePreviewRequest(), metadata=outsider)
        assert preview.invoice_preview.event_count == 0


@pytest.mark.parametrize("permissions", [("admin",), ("usage.read", "admin", "audit.read")])
async def test_replay_needs_the_platform_tenants_platform_admin_whatever_else_is_held(
    metering: Metering, keys: TestKeys, permissions: tuple[str, ...]
) -> None:
    request = pb.ReplayUsageEventsRequest(start_time=EPOCH)
    for tenant in ("parapet", new_tenant()):
        refused = await refusal(
            metering.stub.ReplayUsageEvents(request, metadata=issued(keys, tenant, "op", *permissions))
        )
        assert refused[:2] == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_MISSING")
    # platform.admin resolved in a customer tenant is no platform operator either.
    customer = issued(keys, new_tenant(), "op", "platform.admin", *permissions)
    assert (await refusal(metering.stub.ReplayUsageEvents(request, metadata=customer)))[0] == (
        grpc.StatusCode.PERMISSION_DENIED
    )


async def test_without_usage_read_a_caller_sees_its_own_budgets_not_the_tenant_s(
    metering: Metering, keys: TestKeys
) -> None:
    """A tenant-wide budget's figures are the whole tenant's spend: they were shown to every caller's GetUsage,
    a key scoped to chat included, while the docs say such a caller sees only its own usage."""
    from parapet.auth.v1 import tenant_policy_pb2 as tp

    tenant = new_tenant()
    budgets = [
        tp.Budget(
            budget_id="tenant-day",
            scope=tp.BUDGET_SCOPE_TENANT,
            window=tp.BUDGET_WINDOW_DAY,
            token_limit=10**6,
        ),
        tp.Budget(
            budget_id="user-day", scope=tp.BUDGET_SCOPE_USER, window=tp.BUDGET_WINDOW_DAY, token_limit=10**5
        ),
    ]
    write_policies(metering.policy_file, {tenant: tp.TenantPolicy(budgets=budgets)})
    await metering.stub.Settle(
        settle_request("bob-1", tokens=500), metadata=issued(keys, tenant, "bob", "chat")
    )
    alice = issued(keys, tenant, "alice", "chat")
    await metering.stub.Settle(settle_request("alice-1"), metadata=alice)
    own = await metering.stub.GetUsage(pb.GetUsageRequest(start_time=EPOCH), metadata=alice)
    assert [(b.budget_id, b.used_tokens) for b in own.budgets] == [("user-day", 20)]
    reader = issued(keys, tenant, "carol", "usage.read")
    everything = await metering.stub.GetUsage(pb.GetUsageRequest(start_time=EPOCH), metadata=reader)
    assert {b.budget_id: b.used_tokens for b in everything.budgets}["tenant-day"] == 1020
