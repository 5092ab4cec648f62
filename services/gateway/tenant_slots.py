"""At most so many chats of one tenant at once on a gateway replica: one tenant's burst cannot take every
worker, connection and model call of a replica from the others.

Metering's budgets and rate limits bound what a tenant spends and how often it starts chats; neither bounds
how many of its chats are open at once, and a streamed answer holds its replica for seconds. A tenant over
``limit`` gets RESOURCE_EXHAUSTED ``TENANT_CONCURRENCY_LIMIT`` at once, with a ``QuotaFailure`` naming it and a
``RetryInfo``, before anything is screened, held or billed. The count is per replica (no shared state on the
chat's path): a tenant's limit across the deployment is ``limit`` times the replicas its calls spread over.
Job items are not counted here: their workers run a fixed number at a time (``gateway_job_item_concurrency``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import NoReturn

from parapet.kit import metrics
from parapet.kit.errors import QuotaExceeded
from parapet.kit.logging import OncePer

log = logging.getLogger(__name__)

REASON = "TENANT_CONCURRENCY_LIMIT"
RETRY_AFTER_SECONDS = 1.0  # a streamed chat takes seconds: a slot frees about that soon under a steady load
_WARN_EVERY_SECONDS = 30.0


class TenantSlots:
    """``with slots.hold(tenant_id):`` around a chat; ``limit`` 0 holds nothing."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held: dict[str, int] = {}  # tenants with chats open on this replica (none: no entry)
        self._warnings = OncePer(_WARN_EVERY_SECONDS)  # per tenant

    @contextlib.contextmanager
    def hold(self, tenant_id: str) -> Iterator[None]:
        if not self._limit:
            yield
            return
        held = self._held.get(tenant_id, 0)
        if held >= self._limit:
            self._refuse(tenant_id)
        self._held[tenant_id] = held + 1
        try:
            yield
        finally:
            left = self._held[tenant_id] - 1
            if left:
                self._held[tenant_id] = left
            else:
                del self._held[tenant_id]

    def _refuse(self, tenant_id: str) -> NoReturn:
        metrics.record_gateway_refused_chat(REASON)
        if self._warnings.due(tenant_id):
            log.warning(
                "tenant at its limit of concurrent chats on this replica; refusing more",
                extra={"tenant_id": tenant_id, "limit": self._limit},
            )
        raise QuotaExceeded(
            f"this tenant already has {self._limit} chats in progress on this gateway; retry when one has ended",
            reason="TENANT_CONCURRENCY_LIMIT",  # REASON, spelled out: docs/contracts.md's check reads literals
            violations=[
                (f"tenant:{tenant_id}", f"at most {self._limit} concurrent chats per gateway replica")
            ],
            retry_after=RETRY_AFTER_SECONDS,
            metadata={"limit": str(self._limit)},
        )
