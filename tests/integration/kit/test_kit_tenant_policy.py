"""The kit's tenant policy cache against an auth that stops answering (``tests.integration.stalling_auth``), in
the three ways services use it: inference serves a cached policy without bound, metering for ten cache
lifetimes, moderation never past its lifetime (it fails closed). What is asserted is how many calls reach auth
and what each request gets, never how long anything took.

Until 2026-12-06 each service had its own copy of this cache: moderation's made one call per concurrent
screening against a hung auth, metering's and inference's queued a tenant's requests behind one another's
2 s calls.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import grpc
import pytest

from parapet.auth.v1 import auth_service_pb2_grpc, tenant_policy_pb2
from parapet.kit.clients import ServiceClient
from parapet.kit.context import deadline_var, token_var
from parapet.kit.errors import Unavailable
from parapet.kit.identity import Principal
from parapet.kit.tenant_policy import TenantPolicyCache
from parapet.kit.testing import TestKeys, make_test_keys
from tests.integration.stalling_auth import RunningAuth, stalling_auth

CONCURRENT = 8
Cache = TenantPolicyCache[tenant_policy_pb2.TenantPolicy]


def _unavailable(code: grpc.StatusCode) -> Exception:
    return Unavailable(f"no policy ({code.name})")


@pytest.fixture
def keys() -> TestKeys:
    return make_test_keys()


@asynccontextmanager
async def _cache(keys: TestKeys, **options: Any) -> Any:
    async with stalling_auth(keys) as auth:
        client = ServiceClient(auth_service_pb2_grpc.AuthServiceStub, auth.target)
        cache: Cache = TenantPolicyCache(client, lambda policy: policy, unavailable=_unavailable, **options)
        try:
            yield auth, cache
        finally:
            await cache.close()


def _as_tenant(keys: TestKeys, tenant_id: str) -> Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]:
    """Runs a read as a caller of ``tenant_id`` (the kit's client forwards the caller's token)."""

    async def run(read: Callable[[], Awaitable[Any]]) -> Any:
        token_var.set(keys.token(Principal(tenant_id=tenant_id, subject="u")))
        return await read()

    return run


async def _outcomes(keys: TestKeys, tenant_id: str, cache: Cache, count: int) -> list[object]:
    """``count`` concurrent reads for ``tenant_id``: each a policy's version, or the exception's type name."""
    as_tenant = _as_tenant(keys, tenant_id)

    async def one() -> object:
        try:
            return (await as_tenant(lambda: cache.get(tenant_id))).version
        except Unavailable as error:
            return type(error).__name__

    return list(await asyncio.gather(*(asyncio.create_task(one()) for _ in range(count))))


def _tenant() -> str:
    return f"policy-{uuid.uuid4().hex[:8]}"


async def _stall_during(auth: RunningAuth, first: Awaitable[Any]) -> asyncio.Task[Any]:
    """Stall auth, start ``first`` (whose call then hangs) and return it once its call reached auth."""
    auth.servicer.stalled = True
    task = asyncio.ensure_future(first)
    await auth.servicer.hung.wait()
    return task


@pytest.mark.parametrize(
    ("stale_seconds", "served"),
    [(None, True), (60.0, True), (0.0, False)],
    ids=["without-bound", "bounded", "fail-closed"],
)
async def test_a_hung_auth_gets_one_call_per_tenant_and_the_cache_serves_as_the_service_chose(
    keys: TestKeys, stale_seconds: float | None, served: bool
) -> None:
    tenant = _tenant()
    context: AbstractAsyncContextManager[Any] = _cache(
        keys, ttl=0.0, stale_seconds=stale_seconds, retry_seconds=600.0, timeout=2.0
    )
    async with context as (auth, cache):
        assert await _outcomes(keys, tenant, cache, 1) == [1]
        first = await _stall_during(auth, _outcomes(keys, tenant, cache, 1))
        beside = await _outcomes(keys, tenant, cache, CONCURRENT) if served else []
        others = asyncio.ensure_future(_outcomes(keys, tenant, cache, CONCURRENT)) if not served else None
        outcomes = [*await first, *beside, *(await others if others is not None else [])]
        later = await _outcomes(keys, tenant, cache, CONCURRENT)
        calls = auth.servicer.calls[tenant]
    if served:
        # The hung call's request and every other one get the cached policy; nothing asks auth again within the
        # pause after the failure.
        assert outcomes == [1] * (1 + CONCURRENT) and later == [1] * CONCURRENT
        assert calls == 2
    else:
        # Failing closed: the requests waiting for the hung call share its failure; later ones ask auth again, one
        # call for all of them.
        assert outcomes == ["Unavailable"] * (1 + CONCURRENT) and later == ["Unavailable"] * CONCURRENT
        assert calls == 3


async def test_a_tenant_without_a_cached_policy_shares_one_failed_call(keys: TestKeys) -> None:
    tenant = _tenant()
    async with _cache(keys, ttl=5.0, stale_seconds=None, retry_seconds=600.0, timeout=1.0) as (auth, cache):
        auth.servicer.stalled = True
        assert await _outcomes(keys, tenant, cache, CONCURRENT) == ["Unavailable"] * CONCURRENT
        assert auth.servicer.calls[tenant] == 1


async def test_a_bounded_stale_policy_is_refused_once_past_its_bound(keys: TestKeys) -> None:
    """Metering's rule: a cached policy serves through a short outage, not a long one."""
    tenant = _tenant()
    async with _cache(keys, ttl=0.0, stale_seconds=2.0, retry_seconds=0.1, timeout=0.3) as (auth, cache):
        assert await _outcomes(keys, tenant, cache, 1) == [1]
        auth.servicer.stalled = True
        assert await _outcomes(keys, tenant, cache, 1) == [1]  # within the bound: served
        await asyncio.sleep(2.0)
        assert await _outcomes(keys, tenant, cache, 1) == ["Unavailable"]
        assert auth.servicer.calls[tenant] == 3


async def test_revalidation_by_version_and_a_new_version_applies(keys: TestKeys) -> None:
    tenant = _tenant()
    async with _cache(keys, ttl=0.0, stale_seconds=None, timeout=2.0) as (auth, cache):
        assert await _outcomes(keys, tenant, cache, 1) == [1]
        assert await _outcomes(keys, tenant, cache, 1) == [1]  # not_modified: the cached one, same version
        auth.servicer.allowed, auth.servicer.version = ["cheap", "premium"], 2
        policy = await _as_tenant(keys, tenant)(lambda: cache.get(tenant))
        assert policy.version == 2 and list(policy.models.allowed_models) == ["cheap", "premium"]
        assert auth.servicer.calls[tenant] == 3


async def test_at_most_max_tenants_are_kept(keys: TestKeys) -> None:
    async with _cache(keys, ttl=600.0, stale_seconds=None, max_tenants=2) as (auth, cache):
        tenants = [_tenant() for _ in range(3)]
        for tenant in tenants:
            assert await _outcomes(keys, tenant, cache, 1) == [1]
        assert await _outcomes(keys, tenants[2], cache, 1) == [1]  # kept: no call
        assert await _outcomes(keys, tenants[0], cache, 1) == [1]  # the least recently used went: a call
        assert [auth.servicer.calls[t] for t in tenants] == [2, 1, 1]


async def test_the_caller_that_makes_the_shared_call_lends_it_its_token_not_its_deadline(
    keys: TestKeys,
) -> None:
    """The first request of a tenant had 100 ms left and auth answers in 300 ms. Until the call had its own
    deadline, its DEADLINE_EXCEEDED counted as auth failing: the five requests that waited for it, with all the
    time they needed, were refused with it."""
    tenant = _tenant()
    async with _cache(keys, ttl=60.0, stale_seconds=None, timeout=2.0) as (auth, cache):
        auth.servicer.delay = 0.3
        as_tenant = _as_tenant(keys, tenant)

        async def read(remaining: float | None) -> object:
            deadline_var.set(None if remaining is None else time.monotonic() + remaining)
            try:
                return (await as_tenant(lambda: cache.get(tenant))).version
            except Unavailable as error:
                return type(error).__name__

        first = asyncio.create_task(read(0.1))
        await asyncio.sleep(0.01)  # its call is under way
        others = [asyncio.create_task(read(None)) for _ in range(5)]
        assert [await first, *[await task for task in others]] == [1] * 6
        assert auth.servicer.calls[tenant] == 1
