"""The tenant policy's model rules (``parapet.auth.v1.ModelPolicy``), fetched from the auth service.

The inference contract takes the tenant from the token and nothing policy-like from the request, so the policy
comes from its owner: ``AuthService.GetEffectivePolicy`` called with the caller's own token (the kit's client
forwards it), cached per tenant and revalidated with ``known_version`` after ``ttl`` seconds. When auth cannot be
reached a cached policy is used; with none cached the call fails closed (UNAVAILABLE), never open.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

import grpc

from parapet.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from parapet.kit.clients import ServiceClient
from parapet.kit.config import ServiceSettings
from parapet.kit.errors import Unavailable


@dataclass(frozen=True)
class ModelAccess:
    allowed: frozenset[str]  # models and aliases; empty = every configured model
    default_model: str  # empty = the deployment's default
    max_tokens_per_request: int  # 0 = only the model's own limit
    version: int = 0


OPEN_ACCESS = ModelAccess(frozenset(), "", 0)


class PolicySource(Protocol):
    async def model_access(self, tenant_id: str) -> ModelAccess: ...

    async def close(self) -> None: ...


class OpenPolicySource:
    """No auth service configured (development): every configured model is allowed."""

    async def model_access(self, tenant_id: str) -> ModelAccess:
        return OPEN_ACCESS

    async def close(self) -> None:
        return None


@dataclass
class _Cached:
    access: ModelAccess
    checked: float


class AuthPolicySource:
    def __init__(self, address: str, settings: ServiceSettings, ttl: float = 5.0) -> None:
        # The service's settings: its TLS (auth requires a client certificate under mutual TLS) and keepalive.
        self._client = ServiceClient(auth_service_pb2_grpc.AuthServiceStub, address, settings)
        self._ttl = ttl
        self._cache: dict[str, _Cached] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def close(self) -> None:
        await self._client.close()

    async def model_access(self, tenant_id: str) -> ModelAccess:
        cached = self._cache.get(tenant_id)
        if cached is not None and time.monotonic() - cached.checked < self._ttl:
            return cached.access
        lock = self._locks.setdefault(tenant_id, asyncio.Lock())
        async with lock:  # one refresh per tenant at a time; the others reuse its answer
            cached = self._cache.get(tenant_id)
            if cached is not None and time.monotonic() - cached.checked < self._ttl:
                return cached.access
            known = cached.access.version if cached is not None else 0
            try:
                response = await self._client.stub.GetEffectivePolicy(
                    auth_service_pb2.GetEffectivePolicyRequest(known_version=known), timeout=2.0
                )
            except grpc.aio.AioRpcError:
                if cached is not None:
                    return cached.access
                raise Unavailable("the tenant policy cannot be read right now", retry_after=1.0) from None
            if response.not_modified and cached is not None:
                access = cached.access
            else:
                models = response.policy.models
                access = ModelAccess(
                    frozenset(models.allowed_models),
                    models.default_model,
                    models.max_tokens_per_request,
                    response.policy.version,
                )
            self._cache[tenant_id] = _Cached(access, time.monotonic())
            return access
