"""Authorization decisions asked of auth, one call each: the gateway's one way to ask ``Authorize``.

The chat path remembers decisions per policy version (:class:`services.gateway.policy.TenantPolicies`); the
administrative and job calls ask every time, because they are rare and a revoked admin must not keep the
power for a cache's lifetime. Either way auth's refusal reaches the caller as PERMISSION_DENIED with auth's
reason, and auth being down as auth's own status (UNAVAILABLE with RetryInfo), never as INTERNAL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc.aio

from parapet.auth.v1 import auth_service_pb2, permission_pb2
from parapet.kit.clients import ServiceClient
from parapet.kit.errors import PermissionDenied
from services.auth import permissions
from services.gateway.caller import Caller
from services.gateway.errors import relayed

if TYPE_CHECKING:
    from parapet.auth.v1.auth_service_pb2_grpc import AuthServiceAsyncStub


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


class Authorizer:
    """Asks auth whether a caller holds a permission; owns no channel (the caller's client is shared)."""

    def __init__(self, auth: ServiceClient[AuthServiceAsyncStub], timeout: float) -> None:
        self._auth = auth
        self._timeout = timeout

    async def decide(
        self,
        caller: Caller,
        permission: permission_pb2.Permission.ValueType,
        *,
        feature: str = "",
        model: str = "",
        max_tokens: int = 0,
    ) -> Decision:
        try:
            reply = await self._auth.stub.Authorize(
                auth_service_pb2.AuthorizeRequest(
                    permission=permission, feature=feature, model=model, max_tokens=max_tokens
                ),
                metadata=caller.auth_metadata(),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise relayed(error) from None
        return Decision(reply.allowed, reply.reason)

    async def require(
        self,
        caller: Caller,
        permission: permission_pb2.Permission.ValueType,
        *,
        why: str,
        feature: str = "",
    ) -> None:
        """Raise PERMISSION_DENIED, naming ``why`` and auth's reason, unless the caller holds ``permission``."""
        decision = await self.decide(caller, permission, feature=feature)
        if not decision.allowed:
            name = permissions.name(permission)  # the word of scopes and PERMISSION_MISSING metadata
            raise PermissionDenied(
                f"{why} needs the {name} permission ({decision.reason})",
                reason=decision.reason,
                metadata={"permission": name},
            )
