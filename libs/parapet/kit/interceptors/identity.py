"""Identity, server side: verify the internal token in ``authorization: Bearer <jwt>`` on every call.

Public methods (the service's own list, plus health and reflection) skip the check. A rejected token
raises :class:`~parapet.kit.identity.TokenRejected`, which the errors step turns into UNAUTHENTICATED with
an ``ErrorInfo`` reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from parapet.kit.context import RpcInfo, principal_var, token_var
from parapet.kit.identity import TokenRejected, TokenVerifier

# Infrastructure every client (kubelet probes, grpcurl, load balancers) must reach without a token.
ALWAYS_PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
)


def bearer_token(authorization: Sequence[Any]) -> str:
    """The token in the call's ``authorization`` values; raises TokenRejected when absent or not Bearer."""
    if not authorization:
        raise TokenRejected("this method needs an identity token", reason="TOKEN_MISSING")
    if len(authorization) > 1 or not isinstance(authorization[0], str):
        raise TokenRejected("exactly one authorization value is allowed", reason="TOKEN_INVALID")
    scheme, _, token = authorization[0].partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise TokenRejected("authorization must be 'Bearer <token>'", reason="TOKEN_INVALID")
    return token


async def authenticate(verifier: TokenVerifier, authorization: Sequence[Any], info: RpcInfo) -> None:
    """Verify the caller's token and make its Principal (and the token, for onward calls) current."""
    token = bearer_token(authorization)
    principal = await verifier.verify(token)
    # Set without reset: grpc.aio serves each RPC in a task of its own, whose context dies with it.
    principal_var.set(principal)
    token_var.set(token)
    info.tenant_id, info.subject = principal.tenant_id, principal.subject
