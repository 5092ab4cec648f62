"""The tenant policy's model rules (``parapet.auth.v1.ModelPolicy``), fetched from the auth service.

The inference contract takes the tenant from the token and nothing policy-like from the request, so the policy
comes from its owner: ``AuthService.GetEffectivePolicy`` called with the caller's own token (the kit's client
forwards it), cached per tenant and revalidated with ``known_version`` after ``ttl`` seconds. When auth cannot be
reached a cached policy is used, and auth is not asked again for that tenant for ``policy_retry_seconds``; with
none cached the call fails closed (UNAVAILABLE), never open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from parapet.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from parapet.kit.clients import ServiceClient
from parapet.kit.errors import Unavailable
from services.inference.settings import InferenceSettings

log = logging.getLogger(__name__)


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
class _Tenant:
    """One tenant's cached policy and the state of its revalidation."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one call to auth per tenant at a time
    access: ModelAccess | None = None
    checked: float = 0.0  # when auth last answered (monotonic)
    retry_at: float = 0.0  # after a failed revalidation: auth is not asked again before this (monotonic)
    failed: float = -1.0  # when the last call to auth failed (monotonic)


class AuthPolicySource:
    def __init__(self, address: str, settings: InferenceSettings, ttl: float = 5.0) -> None:
        # The service's settings: its TLS (auth requires a client certificate under mutual TLS) and keepalive.
        self._client = ServiceClient(auth_service_pb2_grpc.AuthServiceStub, address, settings)
        self._ttl = ttl
        self._retry = settings.policy_retry_seconds
        self._tenants: dict[str, _Tenant] = {}

    async def close(self) -> None:
        await self._client.close()

    def _fresh(self, tenant: _Tenant) -> ModelAccess | None:
        """The cached policy while it needs no call to auth: within its window, or in the backoff after a
        failed revalidation."""
        now = time.monotonic()
        if tenant.access is not None and (now - tenant.checked < self._ttl or now < tenant.retry_at):
            return tenant.access
        return None

    async def model_access(self, tenant_id: str) -> ModelAccess:
        tenant = self._tenants.setdefault(tenant_id, _Tenant())
        access = self._fresh(tenant)
        if access is not None:
            return access
        if tenant.access is not None and tenant.lock.locked():
            # Another request is revalidating it: the cached policy serves this one rather than queue behind
            # that call (a hung auth held every request of the tenant for its 2 s deadline).
            return tenant.access
        asked = time.monotonic()
        async with tenant.lock:
            access = self._fresh(tenant)
            if access is not None:
                return access
            if tenant.failed >= asked:
                # The call this request waited for has just failed (the tenant has no policy cached): its
                # outcome is this one's, rather than another call to an auth that does not answer.
                raise _unavailable()
            known = tenant.access.version if tenant.access is not None else 0
            try:
                response = await self._client.stub.GetEffectivePolicy(
                    auth_service_pb2.GetEffectivePolicyRequest(known_version=known), timeout=2.0
                )
            except grpc.aio.AioRpcError as error:
                tenant.failed = time.monotonic()
                if tenant.access is not None:
                    # Auth unreachable: the cached policy is used (no bound: the design keeps serving it), and
                    # auth is not asked again for this tenant before the backoff: a hung auth holds one request
                    # of the tenant per backoff for the call's deadline, not every request in turn.
                    tenant.retry_at = tenant.failed + self._retry
                    log.warning(
                        "the tenant policy could not be revalidated with auth (%s): the cached version %d "
                        "is used, auth is asked again in %gs",
                        error.code().name,
                        tenant.access.version,
                        self._retry,
                    )
                    return tenant.access
                raise _unavailable() from None
            if response.not_modified and tenant.access is not None:
                access = tenant.access
            else:
                models = response.policy.models
                access = ModelAccess(
                    frozenset(models.allowed_models),
                    models.default_model,
                    models.max_tokens_per_request,
                    response.policy.version,
                )
            tenant.access, tenant.checked, tenant.retry_at = access, time.monotonic(), 0.0
            return access


def _unavailable() -> Unavailable:
    return Unavailable("the tenant policy cannot be read right now", retry_after=1.0)
