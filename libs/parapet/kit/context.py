"""Per-RPC context carried in ``contextvars``: the caller's Principal, its token, the request id, the deadline,
and the RPC's own facts (:class:`RpcInfo`).

grpc.aio runs every RPC in a task of its own, and a task copies the context when it is created, so a value
set here by a server interceptor is visible to the servicer and to every outgoing client call it makes, and
never leaks into another RPC. Servicers read the tenant only from :func:`current_principal`.
"""

from __future__ import annotations

import contextvars
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from parapet.kit.identity import Principal

# The Principal verified by the identity interceptor (None on public methods and outside RPCs).
principal_var: ContextVar[Principal | None] = ContextVar("parapet_principal", default=None)
# The raw internal token the Principal came from, forwarded unchanged on outgoing calls.
token_var: ContextVar[str | None] = ContextVar("parapet_token", default=None)
# Correlates log lines of one request across services; travels as ``x-request-id`` metadata.
request_id_var: ContextVar[str | None] = ContextVar("parapet_request_id", default=None)
# Absolute deadline of the incoming RPC on the ``time.monotonic()`` clock (None: the caller set none).
deadline_var: ContextVar[float | None] = ContextVar("parapet_deadline", default=None)

# Metadata in which a service calling on an end client's behalf (the gateway, calling auth's Authenticate) names
# that client's address. Any caller can send it and nothing checks it: fit only as a key for throttling
# failures, where a caller lying about it only spreads its own failures, and never read on the edge.
CLIENT_ADDRESS_KEY = "x-parapet-client-ip"
MAX_CLIENT_ADDRESS_LENGTH = 64


@dataclass(slots=True)
class RpcInfo:
    """Facts about the RPC being served, filled in as the kit's interceptor learns them (the tenant once
    the token is verified, the final status code once the handler is done) and logged at its end."""

    method: str
    request_id: str
    client_request_id: str | None = None  # an edge caller's own id, kept for logs, never propagated
    tenant_id: str | None = None
    subject: str | None = None
    code: str | None = None  # gRPC status code name, once known
    reason: str | None = None  # ErrorInfo reason of a failed call
    # Read when the call begins: the context must not be touched once a cancelled stream is torn down
    # (grpc's call object may already be freed when the handler's generator is finalised: a segfault).
    peer: str = ""
    # The CLIENT_ADDRESS_KEY metadata of the call, when the caller sent a sane one: unauthenticated (see there).
    forwarded_client: str | None = None
    started: float = field(default_factory=time.perf_counter)

    def peer_address(self) -> str:
        """The peer's address without scheme and port (``ipv4:1.2.3.4:5678`` -> ``1.2.3.4``,
        ``ipv6:[::1]:5678`` -> ``::1``); "" when grpc named no peer."""
        address = self.peer.partition(":")[2]
        return address.rpartition(":")[0].strip("[]") or address

    def client_address(self) -> str:
        """The end client: the address the caller forwarded, else :meth:`peer_address`, else ``unknown``.
        The forwarded address is the caller's word (``CLIENT_ADDRESS_KEY``): a throttling key, not an
        identity; an edge method reads :meth:`peer_address` itself."""
        if self.forwarded_client is not None:
            return self.forwarded_client
        return self.peer_address() or "unknown"


# The RPC being served (set by the kit's interceptor when it begins), for servicers that need its facts.
rpc_info_var: ContextVar[RpcInfo | None] = ContextVar("parapet_rpc_info", default=None)


def current_rpc() -> RpcInfo | None:
    """The RPC being served (None outside the kit's server). Read it; the interceptor owns its fields."""
    return rpc_info_var.get()


def current_principal() -> Principal | None:
    """The verified caller of the RPC being served, or None on a public method."""
    return principal_var.get()


def require_principal() -> Principal:
    """The verified caller; raises UNAUTHENTICATED where a servicer needs one and there is none."""
    principal = principal_var.get()
    if principal is None:
        from parapet.kit.errors import Unauthenticated

        raise Unauthenticated("this method needs an authenticated caller", reason="TOKEN_MISSING")
    return principal


def current_request_id() -> str | None:
    return request_id_var.get()


def remaining_time() -> float | None:
    """Seconds left before the incoming RPC's deadline (may be negative), or None when it has none."""
    deadline = deadline_var.get()
    return None if deadline is None else deadline - time.monotonic()


# How close to the incoming RPC's deadline an ending counts as that deadline's: calls to other services get the
# remaining time less 10 ms (parapet.kit.clients), so theirs fails just before, and grpc cancels the handler at
# the deadline itself, which the kit recorded a few microseconds late.
DEADLINE_SLACK_SECONDS = 0.05


def deadline_passed() -> bool:
    """Whether the incoming RPC's deadline has run out (within ``DEADLINE_SLACK_SECONDS``); False without one.
    grpc cancels a handler alike when its caller leaves and when its deadline passes: this tells them apart."""
    remaining = remaining_time()
    return remaining is not None and remaining <= DEADLINE_SLACK_SECONDS


def without_deadline() -> contextvars.Context:
    """A copy of the current context without the incoming RPC's deadline, for a task that outlives the call's
    time or must not be cut short by it (a chat's settlement, one call to auth shared by many callers), yet
    keeps the caller's token, request id and principal."""
    context = contextvars.copy_context()
    context.run(deadline_var.set, None)
    return context
