"""Which callers may have their model call started before their budget hold is granted.

The hold (metering's ``Reserve``, one SQL statement under the counters' row locks) is the slowest step of a
chat's preparation: it answers about 1.4 ms after input screening (docs/status.md). For a caller whose last
hold was granted without a soft-limit warning, the flow starts the model as soon as the input is screened (and
the context found) and keeps the answer back until the hold is granted; a refused hold cancels the call before
any of it reached the caller. The price is a provider call that was started, and cancelled unbilled, for a
chat whose hold was then refused. That happens when a limit runs out between two chats of a caller that saw no
warning: a budget without a soft limit, one that jumps past its soft limit to exhausted in one chat, a rate
limit (they never warn), a burst of concurrent chats, or a tenant-wide budget spent by the tenant's other
callers. So a refusal, failure or unreachable metering withholds speculation from every caller of that tenant,
and so does a change of the tenant's policy, until each caller's next hold is granted cleanly; a warning
withholds it from that caller. ``parapet_gateway_speculative_calls_total{outcome="refused"}`` counts what it
cost.

Memory only and per replica: a replica that has not seen a caller's hold yet waits for it (the safe side).
"""

from __future__ import annotations

from collections import Counter

from parapet.kit.identity import Principal

#: A budget can apply to the tenant, a user or an API key: the key covers every scope a caller's chats hit.
HeadroomKey = tuple[str, str, str]


def headroom_key(principal: Principal) -> HeadroomKey:
    return (principal.tenant_id, principal.subject, principal.api_key_id)


class BudgetHeadroom:
    """The callers whose last budget hold was granted without a warning (bounded, least recent dropped)."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self._capacity = capacity
        self._clear: dict[HeadroomKey, None] = {}  # insertion order = least recently confirmed first
        # Clear callers per tenant: while metering is down every chat withholds its tenant, and a tenant
        # with nobody clear must cost no scan of everyone remembered.
        self._tenants: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._clear)

    def clear(self, principal: Principal) -> bool:
        """Whether the caller's model call may start before its hold is granted."""
        return headroom_key(principal) in self._clear

    def granted(self, principal: Principal, *, warned: bool) -> None:
        """A hold was granted; with a soft-limit warning the next chat waits for its hold again."""
        key = headroom_key(principal)
        self._drop(key)
        if warned:
            return
        self._clear[key] = None
        self._tenants[key[0]] += 1
        if len(self._clear) > self._capacity:
            self._drop(next(iter(self._clear)))

    def withhold_tenant(self, tenant_id: str) -> None:
        """A hold of the tenant was refused or could not be asked for, or its policy changed: every caller
        of the tenant waits for its hold until one is granted cleanly (a tenant-wide budget or rate limit
        refuses them all alike)."""
        if not self._tenants[tenant_id]:
            return
        for key in [key for key in self._clear if key[0] == tenant_id]:
            self._drop(key)

    def _drop(self, key: HeadroomKey) -> None:
        if self._clear.pop(key, ()) is None:  # it was there
            self._tenants[key[0]] -= 1
            if not self._tenants[key[0]]:
                del self._tenants[key[0]]

    def forget(self) -> None:
        """Changes may have been missed (auth's notifications were interrupted): everyone waits again."""
        self._clear.clear()
        self._tenants.clear()
