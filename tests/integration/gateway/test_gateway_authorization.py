"""The gateway's one way to ask auth ``Authorize`` (chat decisions, DeleteReplays, every JobService check):
auth's refusal is PERMISSION_DENIED with auth's reason, auth being down is auth's UNAVAILABLE, never INTERNAL."""

from __future__ import annotations

import grpc
import pytest

from parapet import clients
from parapet.auth.v1 import permission_pb2, tenant_policy_pb2
from parapet.kit.errors import ParapetError, PermissionDenied
from parapet.kit.identity import Principal
from services.gateway.authorization import Authorizer
from services.gateway.caller import Caller
from tests.integration.gateway.conftest import MODULE, Suite, dead_address

pytestmark = MODULE


def caller(suite: Suite, tenant_id: str, subject: str, roles: tuple[str, ...]) -> Caller:
    principal = Principal(tenant_id, subject, roles)
    return Caller(suite.signer.sign(principal), principal, policy_version=0)


async def test_auth_s_refusal_names_the_permission_and_auth_s_reason(suite: Suite) -> None:
    member_role = tenant_policy_pb2.RoleDefinition(
        role="member", permissions=[permission_pb2.PERMISSION_CHAT]
    )
    tenant = await suite.tenant(tenant_policy_pb2.TenantPolicy(roles=[member_role]))
    await suite.user(tenant.tenant_id, "bob", ("member",))
    auth = clients.auth(suite.addresses["auth"])
    try:
        authorizer = Authorizer(auth, timeout=5.0)
        admin = caller(suite, tenant.tenant_id, "alice", ("admin",))
        member = caller(suite, tenant.tenant_id, "bob", ("member",))
        await authorizer.require(admin, permission_pb2.PERMISSION_ADMIN, why="erasing")
        assert (await authorizer.decide(member, permission_pb2.PERMISSION_CHAT)).allowed
        with pytest.raises(PermissionDenied) as refused:
            await authorizer.require(member, permission_pb2.PERMISSION_ADMIN, why="erasing", feature="jobs")
    finally:
        await auth.close()
    assert refused.value.reason == "PERMISSION_MISSING"
    assert refused.value.metadata == {"permission": "admin"}
    assert str(refused.value) == "erasing needs the admin permission (PERMISSION_MISSING)"


async def test_auth_down_is_relayed_as_unavailable_not_a_raw_rpc_error(suite: Suite) -> None:
    tenant = await suite.tenant()
    auth = clients.auth(dead_address())
    try:
        authorizer = Authorizer(auth, timeout=2.0)
        with pytest.raises(ParapetError) as down:
            await authorizer.decide(
                caller(suite, tenant.tenant_id, "alice", ("admin",)), permission_pb2.PERMISSION_ADMIN
            )
    finally:
        await auth.close()
    # A raw AioRpcError would reach the kit's error interceptor as an unexpected exception: INTERNAL.
    assert down.value.code == grpc.StatusCode.UNAVAILABLE
