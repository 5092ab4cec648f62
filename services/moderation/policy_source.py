"""Tenant moderation policies from the auth service, cached per tenant and revalidated by version.

The tenant is always the verified caller's: the call to auth carries the caller's internal token (the
kit's client forwards it), and auth answers for that token's tenant. A failure to learn the policy fails
the screening (UNAVAILABLE): screening under a guessed policy could let through what the tenant blocks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import grpc

from parapet.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from parapet.kit.clients import ServiceClient
from parapet.kit.config import ServiceSettings
from parapet.kit.errors import Unavailable
from services.moderation.policy import DEFAULT_POLICY, Policy


class PolicySource(Protocol):
    async def policy(self, tenant_id: str) -> Policy: ...

    async def close(self) -> None: ...


class DefaultPolicySource:
    """No auth service configured: the service defaults for everyone."""

    async def policy(self, tenant_id: str) -> Policy:
        return DEFAULT_POLICY

    async def close(self) -> None:
        return None


@dataclass
class _Cached:
    policy: Policy
    checked: float


class AuthPolicySource:
    def __init__(self, address: str, cache_seconds: float, settings: ServiceSettings) -> None:
        # The service's settings: its TLS (auth requires a client certificate under mutual TLS) and keepalive.
        self._client = ServiceClient(
            auth_service_pb2_grpc.AuthServiceStub, address, settings, default_timeout=2.0
        )
        self._cache_seconds = cache_seconds
        self._cache: dict[str, _Cached] = {}

    async def policy(self, tenant_id: str) -> Policy:
        cached = self._cache.get(tenant_id)
        now = time.monotonic()
        if cached is not None and now - cached.checked < self._cache_seconds:
            return cached.policy
        known = cached.policy.version if cached is not None else 0
        try:
            response = await self._client.stub.GetEffectivePolicy(
                auth_service_pb2.GetEffectivePolicyRequest(known_version=known)
            )
        except grpc.aio.AioRpcError as error:
            raise Unavailable(
                "the tenant's moderation policy could not be read from the auth service",
                retry_after=1.0,
                reason="POLICY_UNAVAILABLE",
                metadata={"auth_status": error.code().name},
            ) from None
        if response.not_modified and cached is not None:
            policy = cached.policy
        else:
            policy = Policy.from_proto(response.policy.moderation, response.policy.version)
        if len(self._cache) > 10_000:
            self._cache.clear()  # bounded memory; a cold cache costs one call per tenant
        self._cache[tenant_id] = _Cached(policy, now)
        return policy

    async def close(self) -> None:
        await self._client.close()
