"""Routing decisions: canary proportions and stickiness, complexity rules, policy filtering of the chain."""

from __future__ import annotations

import math

import pytest

from parapet.inference.v1 import routing_pb2
from parapet.kit.errors import NotFound, PermissionDenied
from services.inference.config import CanaryConfig, CanaryVariant, ConfigError, parse_config
from services.inference.policy import OPEN_ACCESS, ModelAccess
from services.inference.routing import RequestTraits, Router, canary_choice

CONFIG = parse_config(
    {
        "default_model": "smart",
        "providers": {"local": {"kind": "local"}},
        "models": [
            {"name": "a", "provider": "local", "fallbacks": ["c"]},
            {"name": "b", "provider": "local"},
            {"name": "c", "provider": "local"},
        ],
        "routes": [
            {"name": "smart", "model": "a", "fallbacks": ["b"]},
            {
                "name": "split",
                "canary": {
                    "name": "k",
                    "sticky": "tenant",
                    "variants": [{"model": "a", "weight": 3}, {"model": "b", "weight": 1}],
                },
            },
        ],
    },
    {},
)
TRAITS = RequestTraits(prompt_tokens=10, question="hi", messages=1, context_chunks=0, feature="")


# Weights are relative, at any scale: their sum overflowed to inf when they were huge (every user then got the
# last variant) and was rounded to a few subnormal steps when they were tiny (a 50/50 split became 25/75).
@pytest.mark.parametrize("weights", [(90, 10), (50, 50), (1, 1, 2), (1e308, 1e308), (1e-323, 1e-323, 2e-323)])
def test_canary_proportions_match_the_weights(weights: tuple[float, ...]) -> None:
    canary = CanaryConfig(
        name="rollout",
        sticky="user",
        variants=tuple(CanaryVariant(model=f"m{i}", weight=w) for i, w in enumerate(weights)),
    )
    users = 20_000
    counts = {f"m{i}": 0 for i in range(len(weights))}
    for n in range(users):
        counts[canary_choice(canary, "tenant-a", f"user-{n}")] += 1
    top = max(weights)
    for i, weight in enumerate(weights):
        share = (weight / top) / sum(w / top for w in weights)
        sd = math.sqrt(users * share * (1 - share))
        assert abs(counts[f"m{i}"] - users * share) <= 4 * sd, counts


@pytest.mark.parametrize("weight", [math.inf, math.nan, 0.0, -1.0])
def test_a_canary_weight_that_is_no_share_is_refused_at_start(weight: float) -> None:
    """An infinite weight made every other weight nothing (and the split undefined): refused like 0 is."""
    route = {"name": "r", "canary": {"name": "k", "variants": [{"model": "a", "weight": weight}]}}
    models = [{"name": "a", "provider": "local"}]
    config = {
        "default_model": "a",
        "providers": {"local": {"kind": "local"}},
        "models": models,
        "routes": [route],
    }
    with pytest.raises(ConfigError, match=r"routes\.0\.canary\.variants\.0\.weight"):
        parse_config(config, {})


def test_canary_is_sticky_and_keyed_as_configured() -> None:
    canary = CanaryConfig(
        name="r",
        sticky="tenant",
        variants=(CanaryVariant(model="x", weight=1), CanaryVariant(model="y", weight=1)),
    )
    # Tenant-sticky: every user of a tenant gets the same model.
    for tenant in ("t1", "t2", "t3", "t4"):
        assert len({canary_choice(canary, tenant, f"u{n}") for n in range(50)}) == 1
    per_user = CanaryConfig(name="r", sticky="user", variants=canary.variants)
    assert len({canary_choice(per_user, "t1", f"u{n}") for n in range(50)}) == 2
    assert all(canary_choice(per_user, "t1", "u7") == canary_choice(per_user, "t1", "u7") for _ in range(10))


def test_chains_follow_route_then_model_fallbacks_without_repeats() -> None:
    router = Router(CONFIG)
    plan = router.plan("smart", OPEN_ACCESS, TRAITS, "t", "u")
    assert [m.name for m in plan.chain] == ["a", "b", "c"]
    assert plan.reason == routing_pb2.ROUTING_REASON_ALIAS
    default = router.plan("", OPEN_ACCESS, TRAITS, "t", "u")
    assert default.reason == routing_pb2.ROUTING_REASON_DEFAULT and default.entry == "smart"
    with pytest.raises(NotFound):
        router.plan("nope", OPEN_ACCESS, TRAITS, "t", "u")


def test_policy_filters_the_chain_and_refuses_what_it_does_not_allow() -> None:
    router = Router(CONFIG)
    only_a = ModelAccess(frozenset({"a"}), "", 0)
    assert [m.name for m in router.plan("a", only_a, TRAITS, "t", "u").chain] == ["a"]
    with pytest.raises(PermissionDenied) as denied:
        router.plan("smart", only_a, TRAITS, "t", "u")
    assert denied.value.reason == "MODEL_NOT_ALLOWED"
    via_route = ModelAccess(frozenset({"smart"}), "", 0)
    assert [m.name for m in router.plan("b", via_route, TRAITS, "t", "u").chain] == ["b"]
    policy_default = ModelAccess(frozenset(), "c", 0)
    assert router.plan("", policy_default, TRAITS, "t", "u").chain[0].name == "c"
