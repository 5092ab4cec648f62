"""Which model answers: aliases and tiers, complexity rules, sticky weighted canaries, the tenant's allowed models.

The result is a plan: the ordered chain of models to try (the chosen one, then fallbacks) and why the first was
chosen, which the summary returns to the caller.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from parapet.inference.v1 import routing_pb2
from parapet.kit.errors import NotFound, PermissionDenied
from services.inference.config import (
    CanaryConfig,
    ComplexityConfig,
    InferenceConfig,
    ModelConfig,
)
from services.inference.policy import ModelAccess


@dataclass(frozen=True)
class RequestTraits:
    """What complexity rules look at."""

    prompt_tokens: int
    question: str
    messages: int
    context_chunks: int
    feature: str


@dataclass(frozen=True)
class Plan:
    requested: str  # what the caller asked for ("" = nothing)
    entry: str  # the model or route name actually used (the cache keys on it)
    chain: tuple[ModelConfig, ...]
    reason: int  # routing_pb2.RoutingReason
    detail: str
    canary: str = ""


def complexity_choice(config: ComplexityConfig, traits: RequestTraits) -> tuple[str, str]:
    """(model, detail): the strong model when any rule matches, else the cheap one."""
    question = traits.question.lower()
    for rule in config.rules:
        hits = []
        if rule.prompt_tokens_over is not None and traits.prompt_tokens > rule.prompt_tokens_over:
            hits.append(f"prompt tokens {traits.prompt_tokens} > {rule.prompt_tokens_over}")
        keyword = next((k for k in rule.keywords_any if k.lower() in question), None)
        if keyword is not None:
            hits.append(f"keyword {keyword!r}")
        if rule.messages_over is not None and traits.messages > rule.messages_over:
            hits.append(f"messages {traits.messages} > {rule.messages_over}")
        if rule.context_chunks_over is not None and traits.context_chunks > rule.context_chunks_over:
            hits.append(f"context chunks {traits.context_chunks} > {rule.context_chunks_over}")
        if traits.feature and traits.feature in rule.features:
            hits.append(f"feature {traits.feature!r}")
        if hits:
            return config.strong, f"rule {rule.name!r} matched ({', '.join(hits)}): strong model"
    return config.cheap, "no complexity rule matched: cheap model"


def canary_bucket(canary: str, key: str) -> float:
    """A stable point in [0, 1) for ``key``: the same tenant or user always lands in the same variant."""
    digest = hashlib.sha256(f"{canary}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def canary_choice(config: CanaryConfig, tenant_id: str, subject: str) -> str:
    key = tenant_id if config.sticky == "tenant" else f"{tenant_id}\x00{subject}"
    # Weights are relative: scaled by the largest, their sum is at most the number of variants. Summed as
    # configured, huge ones (1e308) overflowed to inf and sent everyone to the last variant, and tiny ones
    # (subnormal) were rounded to a few steps that skewed the split.
    top = max(v.weight for v in config.variants)
    shares = [v.weight / top for v in config.variants]
    point = canary_bucket(config.name, key) * sum(shares)
    for variant, share in zip(config.variants, shares, strict=True):
        point -= share
        if point < 0:
            return variant.model
    return config.variants[-1].model


class Router:
    def __init__(self, config: InferenceConfig) -> None:
        self._config = config

    def permitted(self, access: ModelAccess) -> set[str] | None:
        """Models the policy allows (None = all): named directly, or reachable through an allowed route."""
        if not access.allowed:
            return None
        models = {m.name for m in self._config.models if m.name in access.allowed}
        for route in self._config.routes:
            if route.name in access.allowed:
                models.update(route.candidates())
        return models

    def plan(
        self, requested: str, access: ModelAccess, traits: RequestTraits, tenant: str, subject: str
    ) -> Plan:
        name = requested or access.default_model or self._config.default_model
        reason = (
            routing_pb2.ROUTING_REASON_EXPLICIT_MODEL if requested else routing_pb2.ROUTING_REASON_DEFAULT
        )
        permitted = self.permitted(access)
        model = self._config.model(name)
        route = self._config.route(name)
        if model is None and route is None:
            raise NotFound(
                f"model {name!r} is not configured", reason="MODEL_NOT_FOUND", metadata={"model": name}
            )
        allowed_name = (
            permitted is None or name in access.allowed or (model is not None and name in permitted)
        )
        if not allowed_name:
            raise PermissionDenied(
                f"the tenant policy does not allow model {name!r}",
                reason="MODEL_NOT_ALLOWED",
                metadata={"model": name},
            )
        detail, canary = "", ""
        names: list[str]
        if model is not None:
            names = [model.name, *model.fallbacks]
            detail = "model named by the caller" if requested else "default model"
        else:
            assert route is not None
            if route.model is not None:
                picked = route.model
                detail = f"alias {route.name!r}"
                if requested:
                    reason = routing_pb2.ROUTING_REASON_ALIAS
            elif route.complexity is not None:
                picked, detail = complexity_choice(route.complexity, traits)
                reason = routing_pb2.ROUTING_REASON_COMPLEXITY
            else:
                assert route.canary is not None
                picked = canary_choice(route.canary, tenant, subject)
                canary = route.canary.name
                detail = f"canary {canary!r} ({route.canary.sticky}-sticky) chose {picked!r}"
                reason = routing_pb2.ROUTING_REASON_CANARY
            chosen = self._config.model(picked)
            assert chosen is not None
            names = [picked, *route.fallbacks, *chosen.fallbacks]
        chain: list[ModelConfig] = []
        for candidate in dict.fromkeys(names):  # ordered, without repeats
            config = self._config.model(candidate)
            if config is not None and (permitted is None or candidate in permitted):
                chain.append(config)
        if not chain:
            raise PermissionDenied(
                f"the tenant policy allows none of the models {name!r} routes to",
                reason="MODEL_NOT_ALLOWED",
                metadata={"model": name},
            )
        return Plan(requested, name, tuple(chain), reason, detail, canary)
