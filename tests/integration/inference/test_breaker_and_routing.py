"""Circuit breaker transitions seen through calls and ListModels; routing by alias, complexity and canary."""

from __future__ import annotations

import asyncio
import math

from parapet.inference.v1 import inference_service_pb2, model_pb2, routing_pb2
from parapet.upstream import UpstreamServer
from tests.integration.inference.conftest import Inference, StartInference, principal, upstream_config


async def _state(inference: Inference, model: str) -> int:
    response = await inference.stub.ListModels(
        inference_service_pb2.ListModelsRequest(), metadata=inference.metadata()
    )
    return int(next(m.circuit_state for m in response.models if m.model == model))


async def test_breaker_opens_on_failures_skips_the_model_then_half_opens_and_closes(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    models = [
        {
            "name": "flaky",
            "provider": "openai",
            "upstream_model": "fl;status=503;times=2",
            "fallbacks": ["backup"],
        },
        {"name": "backup", "provider": "local"},
    ]
    config = upstream_config(
        upstream,
        models,
        retry={"max_attempts": 1},
        breaker={
            "window": 4,
            "min_calls": 2,
            "failure_ratio": 0.5,
            "open_seconds": 0.5,
            "half_open_calls": 1,
        },
    )
    async with start_inference(config) as inference:
        assert await _state(inference, "flaky") == model_pb2.CIRCUIT_STATE_CLOSED
        for _ in range(2):
            outcome = await inference.stream("hello")
            assert outcome.summary.routing.model == "backup"
            assert [a.reason for a in outcome.summary.routing.fallback_attempts] == ["PROVIDER_UNAVAILABLE"]
        assert await _state(inference, "flaky") == model_pb2.CIRCUIT_STATE_OPEN
        # Open: the model is skipped without a call.
        outcome = await inference.stream("hello")
        assert [a.reason for a in outcome.summary.routing.fallback_attempts] == ["CIRCUIT_OPEN"]
        assert len(upstream.requests_for("fl")) == 2
        await asyncio.sleep(0.6)
        assert await _state(inference, "flaky") == model_pb2.CIRCUIT_STATE_HALF_OPEN
        # The trial call goes through (the upstream recovered) and closes the breaker.
        outcome = await inference.stream("hello")
        assert outcome.summary.routing.model == "flaky"
        assert outcome.summary.routing.fallback_attempts == []
        assert await _state(inference, "flaky") == model_pb2.CIRCUIT_STATE_CLOSED


async def test_a_failure_that_opens_the_breaker_falls_back_at_once_and_names_its_cause(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    """A retryable failure that opened the breaker (here a 429 with Retry-After) was still waited out, up to
    max_retry_after_seconds (30 s by default), before a retry the open breaker then refused: the caller waited
    for nothing, and the model was reported CIRCUIT_OPEN instead of what happened to it."""
    models = [
        {
            "name": "limited",
            "provider": "openai",
            "upstream_model": "limited;status=429;retry_after=2",
            "fallbacks": ["backup"],
        },
        {"name": "backup", "provider": "local"},
    ]
    config = upstream_config(
        upstream,
        models,
        retry={"max_attempts": 3},
        breaker={"window": 1, "min_calls": 1, "failure_ratio": 1.0, "open_seconds": 60, "half_open_calls": 1},
    )
    async with start_inference(config) as inference:
        outcome = await inference.stream("hello", model="limited")
        assert outcome.error is None and outcome.summary.routing.model == "backup"
        assert [(a.model, a.reason) for a in outcome.summary.routing.fallback_attempts] == [
            ("limited", "PROVIDER_RATE_LIMITED")
        ]
        assert len(upstream.requests_for("limited")) == 1
        assert await _state(inference, "limited") == model_pb2.CIRCUIT_STATE_OPEN


async def test_aliases_and_complexity_routing_return_the_decision_and_its_reason(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    models = [
        {"name": "cheap", "provider": "openai", "upstream_model": "cheap"},
        {"name": "strong", "provider": "anthropic", "upstream_model": "strong"},
    ]
    routes = [
        {"name": "fast", "model": "cheap"},
        {
            "name": "auto",
            "complexity": {
                "cheap": "cheap",
                "strong": "strong",
                "rules": [
                    {"name": "analysis", "keywords_any": ["analyze", "prove"]},
                    {"name": "long", "prompt_tokens_over": 400},
                ],
            },
        },
    ]
    async with start_inference(upstream_config(upstream, models, routes=routes)) as inference:
        fast = await inference.stream("hi", model="fast")
        assert (fast.summary.routing.model, fast.summary.routing.reason) == (
            "cheap",
            routing_pb2.ROUTING_REASON_ALIAS,
        )
        simple = await inference.stream("What time is it?", model="auto")
        assert simple.summary.routing.model == "cheap"
        assert simple.summary.routing.reason == routing_pb2.ROUTING_REASON_COMPLEXITY
        assert "no complexity rule matched" in simple.summary.routing.detail
        hard = await inference.stream("Please analyze this contract clause.", model="auto")
        assert hard.summary.routing.model == "strong"
        assert "rule 'analysis'" in hard.summary.routing.detail
        long = await inference.stream("word " * 500, model="auto")
        assert long.summary.routing.model == "strong" and "rule 'long'" in long.summary.routing.detail
        default = await inference.stream("hi")
        assert default.summary.routing.reason == routing_pb2.ROUTING_REASON_DEFAULT


async def test_canary_split_is_sticky_per_user_and_within_statistical_tolerance(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    models = [
        {"name": "stable", "provider": "local"},
        {"name": "candidate", "provider": "local"},
    ]
    routes = [
        {
            "name": "chat",
            "canary": {
                "name": "candidate-rollout",
                "sticky": "user",
                "variants": [{"model": "stable", "weight": 80}, {"model": "candidate", "weight": 20}],
            },
        }
    ]
    users = 300
    async with start_inference(upstream_config(upstream, models, routes=routes)) as inference:
        chosen: dict[str, str] = {}
        for n in range(users):
            who = principal(subject=f"user-{n}")
            outcome = await inference.stream("hi", model="chat", who=who)
            assert outcome.summary.routing.reason == routing_pb2.ROUTING_REASON_CANARY
            assert outcome.summary.routing.canary == "candidate-rollout"
            chosen[who.subject] = outcome.summary.routing.model
        # Sticky: the same users get the same model again.
        for n in range(0, users, 30):
            again = await inference.stream(
                "another question", model="chat", who=principal(subject=f"user-{n}")
            )
            assert again.summary.routing.model == chosen[f"user-{n}"]
    candidates = sum(1 for m in chosen.values() if m == "candidate")
    sd = math.sqrt(users * 0.2 * 0.8)
    assert abs(candidates - users * 0.2) <= 4 * sd, candidates


async def test_list_models_names_every_model_a_request_can_be_answered_by(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    """The gateway prices a budget hold at the costliest model a request may be answered by. ListModels left
    out a model's own fallbacks, and a route's reach through its pick's fallbacks: the hold was priced at the
    cheap model while a pricier fallback answered (and was billed)."""
    models = [
        {"name": "cheap", "provider": "local", "fallbacks": ["pricey"]},
        {"name": "pricey", "provider": "local", "output_price_per_million": "60"},
        {"name": "backup", "provider": "local", "fallbacks": ["far"]},
        {"name": "far", "provider": "local"},
        {"name": "other", "provider": "local"},
    ]
    # The chain of a request to "fast": cheap, the route's backup, cheap's pricey (never backup's own far).
    routes = [{"name": "fast", "model": "cheap", "fallbacks": ["backup"]}]
    async with start_inference(upstream_config(upstream, models, routes=routes)) as inference:
        response = await inference.stub.ListModels(
            inference_service_pb2.ListModelsRequest(), metadata=inference.metadata()
        )
    listed = {m.model: m for m in response.models}
    assert list(listed["cheap"].fallbacks) == ["pricey"]
    assert list(listed["pricey"].fallbacks) == []
    assert list(listed["cheap"].aliases) == ["fast"]
    assert list(listed["pricey"].aliases) == ["fast"]  # the route's pick may fall back to it
    assert list(listed["backup"].aliases) == ["fast"]
    assert list(listed["far"].aliases) == [] and list(listed["other"].aliases) == []


async def test_a_route_whose_breakers_are_all_open_says_when_to_come_back(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    """With every model of the route skipped for an open breaker, RetryInfo said 1 s (the value used when no
    provider named a wait): a caller that obeyed was refused again, and again, until the breaker half-opened
    (open_seconds, 30 s by default). It now names the time until the first of them lets a trial through."""
    models = [{"name": "down", "provider": "openai", "upstream_model": "down;status=503"}]
    config = upstream_config(
        upstream,
        models,
        retry={"max_attempts": 1},
        breaker={"window": 1, "min_calls": 1, "failure_ratio": 1.0, "open_seconds": 20, "half_open_calls": 1},
    )
    async with start_inference(config) as inference:
        failed = await inference.stream("hello")
        skipped = await inference.stream("hello")
    assert failed.error is not None and failed.error.reason == "ALL_PROVIDERS_UNAVAILABLE"
    assert (
        failed.error.retry_after == 1.0
    )  # the provider named no wait, and the breaker was closed when tried
    assert skipped.error is not None and skipped.error.reason == "ALL_PROVIDERS_UNAVAILABLE"
    assert skipped.error.error_info is not None
    assert skipped.error.error_info.metadata["attempts"] == "down:CIRCUIT_OPEN"
    assert skipped.error.retry_after is not None and 15 < skipped.error.retry_after <= 20
    assert len(upstream.requests_for("down")) == 1
