"""Which callers may have their model call started before their budget hold is granted.

The hold (metering's ``Reserve``, one SQL statement under the counters' row locks) is the slowest step of a
chat's preparation: it answers about 1.4 ms after input screening (docs/status.md). For a caller whose last
hold was granted without a soft-limit warning, the flow starts the model as soon as the input is screened
(and the context found) and keeps the answer back until the hold is granted; a refused hold cancels the
call before any of it reached the caller. The price is a provider call that was started, and cancelled
unbilled, for a chat whose budget then refused: only possible when a budget jumps from below its soft limit
to exhausted within one chat, which is why any warning, refusal or unreachable metering turns speculation
off for that caller until a hold is granted cleanly again.

Memory only and per replica: a replica that has not seen a caller's hold yet waits for it (the safe side).
"""

from __future__ import annotations

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

    def __len__(self) -> int:
        return len(self._clear)

    def clear(self, principal: Principal) -> bool:
        """Whether the caller's model call may start before its hold is granted."""
        return headroom_key(principal) in self._clear

    def granted(self, principal: Principal, *, warned: bool) -> None:
        """A hold was granted; with a soft-limit warning the next chat waits for its hold again."""
        key = headroom_key(principal)
        self._clear.pop(key, None)
        if warned:
            return
        self._clear[key] = None
        if len(self._clear) > self._capacity:
            del self._clear[next(iter(self._clear))]

    def withheld(self, principal: Principal) -> None:
        """A hold was refused, or metering could not be asked: wait for the hold from now on."""
        self._clear.pop(headroom_key(principal), None)
