"""Identity, server side: verify the internal token in ``authorization: Bearer <jwt>`` on every call.

Public methods (the service's own list, plus health and reflection) skip the check. A rejected token
raises :class:`~parapet.kit.identity.TokenRejected`, which the errors interceptor (outside this one)
turns into UNAUTHENTICATED with an ``ErrorInfo`` reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc.aio

from parapet.kit.context import principal_var, rpc_info_var, token_var
from parapet.kit.identity import TokenRejected, TokenVerifier
from parapet.kit.interceptors._wrap import HandlerInterceptor, StreamBehavior, UnaryBehavior

# Infrastructure every client (kubelet probes, grpcurl, load balancers) must reach without a token.
ALWAYS_PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
)


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The token in the ``authorization`` metadata; raises TokenRejected when absent or not Bearer."""
    values = [value for key, value in metadata or () if key == "authorization"]
    if not values:
        raise TokenRejected("this method needs an identity token", reason="TOKEN_MISSING")
    if len(values) > 1 or not isinstance(values[0], str):
        raise TokenRejected("exactly one authorization value is allowed", reason="TOKEN_INVALID")
    scheme, _, token = values[0].partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise TokenRejected("authorization must be 'Bearer <token>'", reason="TOKEN_INVALID")
    return token


class IdentityInterceptor(HandlerInterceptor):
    def __init__(self, verifier: TokenVerifier, public_methods: Iterable[str] = ()) -> None:
        super().__init__()
        self._verifier = verifier
        self._public = frozenset(public_methods)

    def applies_to(self, method: str) -> bool:
        return method not in self._public and not method.startswith(ALWAYS_PUBLIC_PREFIXES)

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> None:
        token = bearer_token(context.invocation_metadata())
        principal = await self._verifier.verify(token)
        # Set without reset: grpc.aio serves each RPC in a task of its own, whose context dies with it.
        principal_var.set(principal)
        token_var.set(token)
        info = rpc_info_var.get()
        if info is not None:
            info.tenant_id, info.subject = principal.tenant_id, principal.subject

    def around_unary(self, behavior: UnaryBehavior, method: str) -> UnaryBehavior:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._authenticate(context)
            return await behavior(request, context)

        return call

    def around_stream(self, behavior: StreamBehavior, method: str) -> StreamBehavior:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self._authenticate(context)
            async for response in behavior(request, context):
                yield response

        return stream
