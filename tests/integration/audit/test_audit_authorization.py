"""Every audit RPC with tokens as auth issues them (resolved permissions): a key's scopes narrow what its
user's roles grant, each RPC needs its permission, and no request field reaches another tenant."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
import pytest
from sqlalchemy import text

from parapet.audit.v1 import audit_service_pb2
from parapet.kit.errors import error_details
from parapet.kit.identity import Principal
from services.auth import permissions
from tests.integration.audit.conftest import Audit, interaction, new_tenant

# Every permission a tenant policy can grant (what auth resolves for a tenant admin holding all of them).
EVERY_TENANT_PERMISSION = tuple(sorted(permissions.name(p) for p in permissions.TENANT_PERMISSIONS))


def issued(
    audit: Audit, tenant: str, *permissions: str, subject: str = "someone"
) -> tuple[tuple[str, str], ...]:
    """An API key's token as auth issues it: roles named admin, what auth resolved in `perm`."""
    principal = Principal(
        tenant, subject, roles=("admin",), credential_type="api_key", api_key_id="k", permissions=permissions
    )
    return audit.keys.metadata(principal)


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


async def refused_for(call: Any) -> str:
    """The permission a refused call names (PERMISSION_DENIED, PERMISSION_MISSING)."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_details(raised.value).error_info
    assert info is not None and info.reason == "PERMISSION_MISSING"
    return str(info.metadata["permission"])


def _calls(audit: Audit, metadata: Any) -> dict[str, Any]:
    """One call of each RPC (fresh coroutines), by name."""
    return {
        "Record": audit.stub.Record(
            audit_service_pb2.RecordRequest(record=interaction()), metadata=metadata, timeout=5
        ),
        "QueryInteractions": _drain(
            audit.stub.QueryInteractions(audit_service_pb2.QueryInteractionsRequest(), metadata=metadata)
        ),
        "ExportInteractions": _drain(
            audit.stub.ExportInteractions(audit_service_pb2.ExportInteractionsRequest(), metadata=metadata)
        ),
        "VerifyChain": audit.stub.VerifyChain(audit_service_pb2.VerifyChainRequest(), metadata=metadata),
        "Erase": audit.stub.Erase(audit_service_pb2.EraseRequest(user_id="user-1"), metadata=metadata),
    }


async def test_an_admins_key_scoped_to_chat_reaches_no_audit_rpc(audit: Audit) -> None:
    tenant = new_tenant()
    await audit.record(tenant, interaction("user-1", prompt="secret prompt"))
    chat_key = issued(audit, tenant, "chat")
    needed = {}
    for name, call in _calls(audit, chat_key).items():
        needed[name] = await refused_for(call)
    assert needed == {
        "Record": "audit.write",
        "QueryInteractions": "audit.read",
        "ExportInteractions": "audit.read",
        "VerifyChain": "audit.read",
        "Erase": "audit.erase",
    }
    # The body is still there: nothing was erased.
    async with audit.database.transaction() as session:
        prompts = (
            (await session.execute(text("SELECT prompt FROM records WHERE tenant_id = :t"), {"t": tenant}))
            .scalars()
            .all()
        )
    assert prompts == ["secret prompt"]


async def test_each_rpc_needs_exactly_its_permission(audit: Audit) -> None:
    tenant = new_tenant()
    await audit.record(tenant, interaction("user-1"))
    reader = _calls(audit, issued(audit, tenant, "audit.read"))
    assert await refused_for(reader.pop("Record")) == "audit.write"
    assert await refused_for(reader.pop("Erase")) == "audit.erase"
    for call in reader.values():
        await call
    eraser = _calls(audit, issued(audit, tenant, "audit.erase"))
    assert await refused_for(eraser.pop("Record")) == "audit.write"
    for name in ("QueryInteractions", "ExportInteractions", "VerifyChain"):
        assert await refused_for(eraser.pop(name)) == "audit.read"
    assert (await eraser.pop("Erase")).erased_count == 1
    # Record: a tenant's admin (what auth resolves for role admin) or a service credential.
    admin = _calls(audit, issued(audit, tenant, *EVERY_TENANT_PERMISSION))
    assert (await admin.pop("Record")).chain.sequence >= 1
    for call in admin.values():
        await call


async def test_no_request_field_names_another_tenant(audit: Audit) -> None:
    victim, attacker = new_tenant(), new_tenant()
    await audit.record(victim, interaction("user-1", prompt="victim prompt"))
    admin = issued(audit, attacker, *EVERY_TENANT_PERMISSION)
    # A record naming the victim's tenant is stored in the caller's, and chained there.
    forged = interaction("user-1", prompt="forged", tenant_id=victim)
    reply = await audit.stub.Record(audit_service_pb2.RecordRequest(record=forged), metadata=admin, timeout=5)
    assert reply.chain.sequence == 1
    async with audit.database.transaction() as session:
        rows = (
            await session.execute(
                text("SELECT tenant_id, prompt FROM records WHERE record_id = :r"), {"r": forged.record_id}
            )
        ).all()
    assert [tuple(r) for r in rows] == [(attacker, "forged")]
    assert (await audit.verify(victim)).records_verified == 1
    # Erasing the same user id in the attacker's tenant leaves the victim's bodies.
    erased = await audit.stub.Erase(audit_service_pb2.EraseRequest(user_id="user-1"), metadata=admin)
    assert erased.erased_count == 1  # the forged record only
    async with audit.database.transaction() as session:
        kept = (
            await session.execute(
                text("SELECT prompt, erase_time FROM records WHERE tenant_id = :t"), {"t": victim}
            )
        ).all()
    assert [(r.prompt, r.erase_time) for r in kept] == [("victim prompt", None)]
