"""A tenant's policy read from its owner, auth's ``GetEffectivePolicy``, cached per tenant: the one way the
services that enforce a part of it (inference: models; metering and billing: budgets; moderation: screening)
read it.

Auth answers for the caller's tenant (the kit's client forwards the caller's token), so the cache is keyed by
the tenant of the call. An entry is used for ``ttl`` seconds, then revalidated with its version
(``known_version``: auth answers ``not_modified`` and nothing is converted again). Per tenant:

- **one call at a time.** Requests that find a call under way wait for it and share its outcome; requests
  that find a policy cached and a revalidation under way use the cached policy without waiting.
- **after a failure** (auth unreachable, or no answer within ``timeout``), the cached policy serves while it
  is within its service's ``stale_seconds`` (None: without bound; 0: never, the service fails closed), and
  auth is not asked again for ``retry_seconds`` while it does. A tenant with nothing the service may serve gets
  the service's UNAVAILABLE, and its next request asks auth again (one call at a time, the requests waiting for
  it sharing its outcome): pausing there would refuse the tenant for the whole pause after one lost call.
  Until 2026-12-06 each service kept its own copy of this cache, and a hung auth held every request of a tenant
  in turn, each waiting out its own 2 s call (inference, metering), or all of them at once, each with its own
  call (moderation).
- **its own deadline**: the call runs with ``timeout`` alone, not the deadline of the request that happens to
  make it, whose shortness would otherwise be taken for auth failing and shared with every request waiting.

At most ``max_tenants`` tenants are kept; the least recently used one goes first.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import grpc
import grpc.aio

from parapet.auth.v1 import auth_service_pb2, auth_service_pb2_grpc, tenant_policy_pb2
from parapet.kit.clients import ServiceClient
from parapet.kit.config import ServiceSettings
from parapet.kit.context import without_deadline

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_SECONDS = 5.0  # after a failed call to auth, the default pause before the tenant's next one
CALL_SECONDS = 2.0  # the deadline of a call to auth: a policy read sits on the caller's path


@dataclass
class _Entry(Generic[T]):
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    value: T | None = None
    version: int = 0
    checked: float = -math.inf  # when auth last answered (monotonic)
    failed_at: float = -math.inf  # when the last call to auth failed (monotonic)
    failure: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE


class TenantPolicyCache(Generic[T]):
    """``await cache.get(tenant_id)``: the tenant's policy as ``convert`` makes it (the part a service uses)."""

    def __init__(
        self,
        client: ServiceClient[auth_service_pb2_grpc.AuthServiceStub],
        convert: Callable[[tenant_policy_pb2.TenantPolicy], T],
        *,
        ttl: float,
        stale_seconds: float | None,
        unavailable: Callable[[grpc.StatusCode], Exception],
        retry_seconds: float = RETRY_SECONDS,
        timeout: float = CALL_SECONDS,
        max_tenants: int = 10_000,
    ) -> None:
        self._client = client
        self._convert = convert
        self._ttl = ttl
        self._stale = stale_seconds
        self._unavailable = unavailable
        self._retry = retry_seconds
        self._timeout = timeout
        self._max_tenants = max_tenants
        self._tenants: OrderedDict[str, _Entry[T]] = OrderedDict()

    @classmethod
    def from_auth(
        cls,
        settings: ServiceSettings,
        convert: Callable[[tenant_policy_pb2.TenantPolicy], T],
        *,
        ttl: float,
        stale_seconds: float | None,
        unavailable: Callable[[grpc.StatusCode], Exception],
        retry_seconds: float = RETRY_SECONDS,
    ) -> TenantPolicyCache[T]:
        """A cache reading auth at the service's ``auth_address``, over a client with the service's own TLS (auth
        requires a client certificate under mutual TLS) and keepalive."""
        if settings.auth_address is None:
            raise ValueError("tenant policies from auth need PARAPET_AUTH_ADDRESS")
        # Not parapet.clients.auth: its client is typed by the async stub, this cache's by the stub it is built
        # with everywhere else (tests build it directly).
        client = ServiceClient(auth_service_pb2_grpc.AuthServiceStub, settings.auth_address, settings)
        return cls(
            client,
            convert,
            ttl=ttl,
            stale_seconds=stale_seconds,
            unavailable=unavailable,
            retry_seconds=retry_seconds,
        )

    async def close(self) -> None:
        await self._client.close()

    async def get(self, tenant_id: str) -> T:
        entry = self._entry(tenant_id)
        asked = time.monotonic()
        found = self._usable(entry, asked)
        if found is not None:
            return found
        if entry.value is not None and entry.lock.locked() and self._may_serve_stale(entry, asked):
            return entry.value  # another request is revalidating: no need to queue behind its call
        async with entry.lock:
            now = time.monotonic()
            found = self._usable(entry, now)
            if found is not None:
                return found
            if entry.failed_at >= asked:
                # The call this request waited for has just failed: its outcome is this one's, rather than
                # another call to an auth that does not answer.
                return self._after_failure(entry, now)
            return await self._call(tenant_id, entry)

    async def _call(self, tenant_id: str, entry: _Entry[T]) -> T:
        known = entry.version if entry.value is not None else 0
        request = auth_service_pb2.GetEffectivePolicyRequest(known_version=known)
        # In a task of its own, without the caller's deadline (the kit's client caps a call at the incoming
        # RPC's time left) but with its token (auth answers for the token's tenant). Cancelling the caller
        # cancels the call: the next waiter then makes its own.
        call = asyncio.create_task(self._ask(request), context=without_deadline())
        try:
            response = await call
        except grpc.aio.AioRpcError as error:
            entry.failed_at = time.monotonic()
            entry.failure = error.code()
            served = entry.value is not None and self._may_serve_stale(entry, entry.failed_at)
            log.warning(
                "the tenant policy could not be read from auth (%s); %s",
                error.code().name,
                f"the cached version is used, auth is asked again in {self._retry:g} s"
                if served
                else "refused: no policy this service may use",
                extra={
                    "tenant_id": tenant_id,
                    "cached_version": entry.version if entry.value is not None else None,
                },
            )
            return self._after_failure(entry, entry.failed_at)
        if not (response.not_modified and entry.value is not None):
            entry.value = self._convert(response.policy)
            entry.version = response.policy.version
        entry.checked = time.monotonic()
        return entry.value

    async def _ask(
        self, request: auth_service_pb2.GetEffectivePolicyRequest
    ) -> auth_service_pb2.GetEffectivePolicyResponse:
        response: auth_service_pb2.GetEffectivePolicyResponse = await self._client.stub.GetEffectivePolicy(
            request, timeout=self._timeout
        )
        return response

    def _entry(self, tenant_id: str) -> _Entry[T]:
        entry = self._tenants.get(tenant_id)
        if entry is None:
            entry = self._tenants[tenant_id] = _Entry()
            self._evict()
        else:
            self._tenants.move_to_end(tenant_id)
        return entry

    def _evict(self) -> None:
        """Drop the least recently used tenants beyond ``max_tenants`` (never one whose call is under way)."""
        excess = len(self._tenants) - self._max_tenants
        if excess <= 0:
            return
        oldest = itertools.islice(self._tenants.items(), excess)
        for tenant_id in [tenant_id for tenant_id, entry in oldest if not entry.lock.locked()]:
            del self._tenants[tenant_id]

    def _usable(self, entry: _Entry[T], now: float) -> T | None:
        """The cached policy when no call to auth is due: within its ``ttl``, or in the pause after a failure
        while it may still serve."""
        if entry.value is None:
            return None
        if now - entry.checked < self._ttl:
            return entry.value
        paused = entry.failed_at > entry.checked and now < entry.failed_at + self._retry
        if paused and self._may_serve_stale(entry, now):
            return entry.value
        return None

    def _may_serve_stale(self, entry: _Entry[T], now: float) -> bool:
        return self._stale is None or now - entry.checked < self._ttl + self._stale

    def _after_failure(self, entry: _Entry[T], now: float) -> T:
        if entry.value is not None and self._may_serve_stale(entry, now):
            return entry.value
        raise self._unavailable(entry.failure)
