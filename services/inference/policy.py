"""The tenant policy's model rules (``parapet.auth.v1.ModelPolicy``), fetched from the auth service.

The inference contract takes the tenant from the token and nothing policy-like from the request, so the policy
comes from its owner: ``AuthService.GetEffectivePolicy`` called with the caller's own token (the kit's client
forwards it), through the kit's tenant policy cache (``parapet.kit.tenant_policy``): revalidated with
``known_version`` after ``ttl`` seconds. When auth cannot be reached a cached policy is used, and auth is not
asked again for that tenant for ``policy_retry_seconds``; with none cached the call fails closed (UNAVAILABLE),
never open.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import grpc

from parapet.auth.v1 import tenant_policy_pb2
from parapet.kit.errors import Unavailable
from parapet.kit.tenant_policy import TenantPolicyCache
from services.inference.settings import InferenceSettings


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


def _model_access(policy: tenant_policy_pb2.TenantPolicy) -> ModelAccess:
    models = policy.models
    return ModelAccess(
        frozenset(models.allowed_models), models.default_model, models.max_tokens_per_request, policy.version
    )


def _unavailable(_code: grpc.StatusCode) -> Unavailable:
    return Unavailable("the tenant policy cannot be read right now", retry_after=1.0)


class AuthPolicySource:
    """The tenant's model rules through the kit's tenant policy cache: a cached policy is served without bound
    while auth cannot be reached (a model rule is no safety limit; refusing every completion would be)."""

    def __init__(self, settings: InferenceSettings) -> None:
        self._cache = TenantPolicyCache.from_auth(
            settings,
            _model_access,
            ttl=settings.policy_cache_seconds,
            stale_seconds=None,
            unavailable=_unavailable,
            retry_seconds=settings.policy_retry_seconds,
        )

    async def close(self) -> None:
        await self._cache.close()

    async def model_access(self, tenant_id: str) -> ModelAccess:
        return await self._cache.get(tenant_id)
