"""The identity cache (credential hash -> principal and issued token) and the tenant cache (state, policy).

Both are bounded, short-lived, and dropped per tenant when any replica changes that tenant (PostgreSQL
NOTIFY, see ``invalidation.py``). A per-tenant generation closes the race where a lookup reads the old
state, the change and its notification land, and the lookup then stores the stale answer: a lookup stores
only if its tenant's generation is still the one it started with.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from parapet.kit.identity import Principal

if TYPE_CHECKING:
    from services.auth.issued import Issued

V = TypeVar("V")


@dataclass
class IdentityEntry:
    principal: Principal
    policy_version: int
    # When the credential itself stops being valid (API key expiry, OIDC token exp); no token outlives it.
    credential_expires: float | None = None
    # The token last issued for the credential, reused while half its life remains.
    issued: Issued | None = None
    last_use_written: float = field(default_factory=time.time)


class TenantKeyedCache(Generic[V]):
    """An LRU of at most ``size`` entries, each for at most ``ttl`` seconds, droppable per tenant."""

    def __init__(self, size: int, ttl: float) -> None:
        self._size = size
        self.ttl = ttl
        self._entries: OrderedDict[object, tuple[str, float, V]] = OrderedDict()
        self._generations: dict[str, int] = {}

    def generation(self, tenant_id: str) -> int:
        return self._generations.get(tenant_id, 0)

    def get(self, key: object) -> V | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if time.time() >= found[1]:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return found[2]

    def put(
        self, key: object, tenant_id: str, value: V, *, generation: int, expires: float | None = None
    ) -> None:
        if generation != self.generation(tenant_id):
            return  # the tenant changed while this value was being read: it may be stale
        deadline = time.time() + self.ttl
        self._entries[key] = (tenant_id, deadline if expires is None else min(deadline, expires), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def invalidate_tenant(self, tenant_id: str) -> None:
        self._generations[tenant_id] = self.generation(tenant_id) + 1
        for key in [k for k, entry in self._entries.items() if entry[0] == tenant_id]:
            del self._entries[key]

    def clear(self) -> None:
        for tenant_id in {entry[0] for entry in self._entries.values()} | set(self._generations):
            self._generations[tenant_id] = self.generation(tenant_id) + 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
