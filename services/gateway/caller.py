"""Who a chat runs for, once authenticated: the seam between authentication and the flow.

The chat RPCs build a :class:`Caller` from the caller's API key or OIDC token (``services.gateway.identity``);
the async-job worker builds one for the job's submitter. :class:`services.gateway.flow.ChatFlow` needs
nothing else about the caller, so both run exactly the same governed flow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from parapet.kit.identity import Principal


@dataclass(frozen=True)
class Caller:
    """An authenticated caller of the chat flow."""

    # The internal token the auth service issued for this caller; sent as `authorization: Bearer` on every
    # downstream call, where each service verifies it and takes the tenant from it.
    token: str
    # The verified identity the token holds (tenant, subject, roles, groups, API key...).
    principal: Principal
    # Version of the tenant policy the auth service applied when it issued the token; the flow applies the
    # policy of this version (or newer) and records it in the summary and the audit record.
    policy_version: int
    # When the token stops being accepted, on the `time.time()` clock; 0 = unknown. A flow that outlives it
    # (a long job) asks for a fresh Caller rather than sending an expired token.
    expire_time: float = 0.0

    @property
    def tenant_id(self) -> str:
        return self.principal.tenant_id

    def auth_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata that makes a downstream call act for this caller."""
        return (("authorization", f"Bearer {self.token}"),)

    def expires_within(self, seconds: float) -> bool:
        """Whether the token will have expired ``seconds`` from now (False when the expiry is unknown)."""
        return self.expire_time > 0 and time.time() + seconds >= self.expire_time
