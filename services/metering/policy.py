"""Tenant policies (budgets, rate limits, role definitions) and where metering and billing read them from.

The tenant policy is owned by the auth service. Metering reads it through a :class:`PolicySource`: the auth
service's ``GetEffectivePolicy`` (cached briefly per tenant, so a Reserve costs no extra hop in the common
case), or a JSON file for deployments that run metering without auth.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import grpc
from google.protobuf import json_format

from parapet.auth.v1 import tenant_policy_pb2
from parapet.kit.errors import Unavailable
from parapet.kit.tenant_policy import TenantPolicyCache
from services.metering.settings import PolicySettings

TenantPolicy = tenant_policy_pb2.TenantPolicy


class PolicySource(Protocol):
    """The current policy of a tenant; the caller's identity is the tenant's (the token is forwarded)."""

    async def get(self, tenant_id: str) -> TenantPolicy: ...

    async def close(self) -> None: ...


class FilePolicySource:
    """Policies from a JSON object ``{tenant_id: TenantPolicy as protobuf JSON}``; unknown tenants: none.

    The file is re-read when its modification time changes, so an operator edits limits without a restart.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._policies: dict[str, TenantPolicy] = {}
        self._load()

    def _load(self) -> None:
        info = self._path.stat()
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp == self._stamp:
            return
        raw = json.loads(self._path.read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"{self._path}: expected a JSON object of tenant id to policy")
        self._policies = {t: json_format.ParseDict(body, TenantPolicy()) for t, body in raw.items()}
        self._stamp = stamp

    async def get(self, tenant_id: str) -> TenantPolicy:
        self._load()
        return self._policies.get(tenant_id, TenantPolicy())

    async def close(self) -> None:
        return None


def _unavailable(code: grpc.StatusCode) -> Unavailable:
    return Unavailable(
        "tenant policy unavailable: the auth service did not answer",
        retry_after=1.0,
        metadata={"dependency": "auth", "code": code.name},
    )


def _as_is(policy: TenantPolicy) -> TenantPolicy:
    return policy


class AuthPolicySource:
    """``AuthService.GetEffectivePolicy`` through the kit's tenant policy cache (``parapet.kit.tenant_policy``).

    The call runs inside the caller's RPC, so the kit's client forwards the caller's internal token and auth
    answers for that token's tenant. While auth cannot be reached the cached policy serves while it is at most
    ten ``ttl`` old: metering stays up through a short auth outage without forgetting budgets, and does not
    enforce budgets that may have changed long ago.
    """

    def __init__(self, settings: PolicySettings) -> None:
        ttl = settings.policy_cache_seconds
        self._cache = TenantPolicyCache.from_auth(
            settings, _as_is, ttl=ttl, stale_seconds=9 * ttl, unavailable=_unavailable
        )

    async def get(self, tenant_id: str) -> TenantPolicy:
        return await self._cache.get(tenant_id)

    async def close(self) -> None:
        await self._cache.close()


def policy_source(settings: PolicySettings) -> PolicySource:
    """Policies from the configured file, else from the auth service; neither configured is an error."""
    if settings.policy_file is not None:
        return FilePolicySource(settings.policy_file)
    if settings.auth_address is None:
        raise ValueError("set PARAPET_AUTH_ADDRESS (tenant policies from auth) or PARAPET_POLICY_FILE")
    return AuthPolicySource(settings)
