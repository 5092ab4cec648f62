"""Tenant moderation policies from the auth service, cached per tenant and revalidated by version.

The tenant is always the verified caller's: the call to auth carries the caller's internal token (the
kit's client forwards it), and auth answers for that token's tenant. A failure to learn the policy fails
the screening (UNAVAILABLE): screening under a guessed policy could let through what the tenant blocks.
Concurrent screenings of a tenant share one call to auth (``parapet.kit.tenant_policy``); until 2026-12-06
each made its own, all at once, against an auth that did not answer.
"""

from __future__ import annotations

from typing import Protocol

import grpc

from parapet.auth.v1 import tenant_policy_pb2
from parapet.kit.errors import Unavailable
from parapet.kit.tenant_policy import TenantPolicyCache
from services.moderation.policy import DEFAULT_POLICY, Policy
from services.moderation.settings import ModerationSettings


class PolicySource(Protocol):
    async def policy(self, tenant_id: str) -> Policy: ...

    async def close(self) -> None: ...


class DefaultPolicySource:
    """No auth service configured: the service defaults for everyone."""

    async def policy(self, tenant_id: str) -> Policy:
        return DEFAULT_POLICY

    async def close(self) -> None:
        return None


def _unavailable(code: grpc.StatusCode) -> Unavailable:
    return Unavailable(
        "the tenant's moderation policy could not be read from the auth service",
        retry_after=1.0,
        reason="POLICY_UNAVAILABLE",
        metadata={"auth_status": code.name},
    )


def _moderation_policy(policy: tenant_policy_pb2.TenantPolicy) -> Policy:
    return Policy.from_proto(policy.moderation, policy.version)


class AuthPolicySource:
    """Through the kit's tenant policy cache (``parapet.kit.tenant_policy``), failing closed: a policy past its
    ``cache_seconds`` is not used while auth cannot confirm it."""

    def __init__(self, settings: ModerationSettings) -> None:
        self._cache = TenantPolicyCache.from_auth(
            settings,
            _moderation_policy,
            ttl=settings.policy_cache_seconds,
            stale_seconds=0.0,
            unavailable=_unavailable,
        )

    async def policy(self, tenant_id: str) -> Policy:
        return await self._cache.get(tenant_id)

    async def close(self) -> None:
        await self._cache.close()
