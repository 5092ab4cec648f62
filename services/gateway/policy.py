"""The tenant policy and authorization decisions, cached per tenant and policy version.

The policy (degradation, model defaults and caps, budgets, retention) changes only with a new version, and
every internal token names the version current when auth issued it; an entry for (tenant, version) is then
valid until auth announces a change (the same invalidation as the identity cache). Authorization decisions
are a pure function of the principal's roles and scopes, the policy version and the request's permission,
model, feature and max_tokens, so they are remembered under exactly those.
"""

from __future__ import annotations

import grpc.aio

from parapet.auth.v1 import auth_service_pb2, permission_pb2, tenant_policy_pb2
from parapet.kit.errors import PermissionDenied
from services.auth.cache import TenantKeyedCache
from services.gateway.authorization import Authorizer, Decision
from services.gateway.caller import Caller
from services.gateway.errors import relayed
from services.gateway.peers import Peers
from services.gateway.settings import GatewaySettings

_DECISIONS = 20_000  # bounded: distinct (principal shape, model, feature, max_tokens) combinations


class TenantPolicies:
    def __init__(self, peers: Peers, settings: GatewaySettings) -> None:
        self._peers = peers
        self._timeout = settings.gateway_downstream_timeout_seconds
        ttl = settings.gateway_policy_cache_seconds
        self._policies: TenantKeyedCache[tenant_policy_pb2.TenantPolicy] = TenantKeyedCache(10_000, ttl)
        self._decisions: TenantKeyedCache[Decision] = TenantKeyedCache(_DECISIONS, ttl)
        self.authorizer = Authorizer(peers.auth, self._timeout)

    async def policy(self, caller: Caller) -> tenant_policy_pb2.TenantPolicy:
        key = (caller.tenant_id, caller.policy_version)
        found = self._policies.get(key)
        if found is not None:
            return found
        generation = self._policies.generation(caller.tenant_id)
        try:
            reply = await self._peers.auth.stub.GetEffectivePolicy(
                auth_service_pb2.GetEffectivePolicyRequest(),
                metadata=caller.auth_metadata(),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise relayed(error) from None
        policy: tenant_policy_pb2.TenantPolicy = reply.policy
        self._policies.put(key, caller.tenant_id, policy, generation=generation)
        return policy

    async def authorize(self, caller: Caller, *, model: str, feature: str, max_tokens: int) -> None:
        """Raise PERMISSION_DENIED with auth's reason unless the caller may chat with ``model``."""
        p = caller.principal
        key = (p.tenant_id, p.roles, p.scopes, caller.policy_version, model, feature, max_tokens)
        decision = self._decisions.get(key)
        if decision is None:
            generation = self._decisions.generation(p.tenant_id)
            decision = await self.authorizer.decide(
                caller, permission_pb2.PERMISSION_CHAT, model=model, feature=feature, max_tokens=max_tokens
            )
            self._decisions.put(key, p.tenant_id, decision, generation=generation)
        if not decision.allowed:
            what = f"model {model!r}" if decision.reason == "MODEL_NOT_ALLOWED" else "chat"
            raise PermissionDenied(
                f"this credential may not use {what} ({decision.reason})",
                reason=decision.reason,
                metadata={"model": model, "feature": feature},
            )

    def invalidate_tenant(self, tenant_id: str) -> None:
        self._policies.invalidate_tenant(tenant_id)
        self._decisions.invalidate_tenant(tenant_id)

    def clear(self) -> None:
        self._policies.clear()
        self._decisions.clear()
