"""Retries, timeouts, fallback, mid-stream failures and deadlines, against the fault-injecting upstream.

Timing is asserted only as generous bounds on the upstream's recorded arrival times relative to each other
(the order and spacing of attempts), never as wall-clock performance.
"""

from __future__ import annotations

import itertools

import grpc

from parapet.embedded import free_port
from parapet.inference.v1 import generation_pb2, routing_pb2
from parapet.upstream import UpstreamServer
from tests.integration.inference.conftest import StartInference, upstream_config


def _gaps(upstream: UpstreamServer, model: str) -> list[float]:
    arrivals = [r.arrival for r in upstream.requests_for(model)]
    return [b - a for a, b in itertools.pairwise(arrivals)]


async def test_rate_limit_is_retried_after_retry_after_then_answers(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    models = [{"name": "m", "provider": "openai", "upstream_model": "rl;status=429;retry_after=0.3;times=2"}]
    async with start_inference(upstream_config(upstream, models)) as inference:
        outcome = await inference.stream("hi there")
    assert outcome.error is None and outcome.text == "You said: hi there"
    assert len(upstream.requests_for("rl")) == 3
    # Retry-After is a floor for each wait; the backoff cap (0.1 s) is far below it, so it decides.
    assert all(0.29 <= gap < 2.0 for gap in _gaps(upstream, "rl")), _gaps(upstream, "rl")
    assert outcome.summary.routing.fallback_attempts == []


async def test_server_errors_back_off_with_jitter_within_the_cap(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    models = [{"name": "m", "provider": "anthropic", "upstream_model": "e5;status=503;times=2"}]
    config = upstream_config(upstream, models, retry={"max_attempts": 3, "base_delay_seconds": 0.2})
    async with start_inference(config) as inference:
        outcome = await inference.stream("again")
    assert outcome.error is None
    gaps = _gaps(upstream, "e5")
    assert len(gaps) == 2
    # Full jitter: retry n waits uniformly in [0, min(max, base * 2^(n-1))]: caps 0.2 s then 0.4 s.
    assert gaps[0] < 0.2 + 0.5 and gaps[1] < 0.4 + 0.5, gaps


async def test_rejected_requests_are_not_retried_nor_fallen_back(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    models = [
        {"name": "m", "provider": "openai", "upstream_model": "bad;status=400", "fallbacks": ["ok"]},
        {"name": "ok", "provider": "openai", "upstream_model": "good"},
    ]
    async with start_inference(upstream_config(upstream, models)) as inference:
        outcome = await inference.stream("x")
    assert outcome.error is not None
    assert outcome.error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome.error.reason == "PROVIDER_REJECTED"
    assert len(upstream.requests_for("bad")) == 1 and upstream.requests_for("good") == []


async def test_fallback_chain_is_tried_in_order_and_reported(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    port = free_port()  # nothing listens: connections are refused
    models = [
        {"name": "first", "provider": "openai", "upstream_model": "a;status=500"},
        {"name": "second", "provider": "refused", "upstream_model": "b"},
        {"name": "third", "provider": "anthropic", "upstream_model": "c"},
    ]
    routes = [{"name": "smart", "model": "first", "fallbacks": ["second", "third"]}]
    config = upstream_config(
        upstream, models, routes=routes, retry={"max_attempts": 2, "base_delay_seconds": 0}
    )
    config["providers"]["refused"] = {"kind": "openai_compatible", "base_url": f"http://127.0.0.1:{port}/v1"}
    async with start_inference(config) as inference:
        outcome = await inference.stream("who answers?", model="smart")
    assert outcome.error is None and outcome.text == "You said: who answers?"
    routing = outcome.summary.routing
    assert (routing.requested_model, routing.model, routing.provider) == ("smart", "third", "anthropic")
    assert routing.reason == routing_pb2.ROUTING_REASON_FALLBACK
    assert [(a.model, a.reason) for a in routing.fallback_attempts] == [
        ("first", "PROVIDER_UNAVAILABLE"),
        ("second", "PROVIDER_UNAVAILABLE"),
    ]
    assert [r.model for r in upstream.requests] == ["a", "a", "c"]


async def test_a_stream_failing_before_its_first_token_falls_back_transparently(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    models = [
        {
            "name": "cut",
            "provider": "openai",
            "upstream_model": "cut;cut_after=0",
            "fallbacks": ["bad", "ok"],
        },
        {"name": "bad", "provider": "anthropic", "upstream_model": "bad;malformed_after=0"},
        {"name": "ok", "provider": "openai", "upstream_model": "ok"},
    ]
    config = upstream_config(upstream, models, retry={"max_attempts": 1})
    async with start_inference(config) as inference:
        outcome = await inference.stream("still there?")
    assert outcome.error is None
    assert outcome.text == "You said: still there?"  # nothing from the failed attempts leaked
    assert [(a.model, a.reason) for a in outcome.summary.routing.fallback_attempts] == [
        ("cut", "STREAM_INTERRUPTED"),
        ("bad", "STREAM_INTERRUPTED"),
    ]
    # The failed attempts took the prompt: their usage is counted (estimated), on top of the answer's.
    assert outcome.summary.usage.estimated


async def test_each_attempt_is_announced_with_its_prompt_before_it_answers_only_when_asked(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    """A caller that stops a stream before its summary (its own caller left) bills what the prompt cost:
    inference, asked to, says before each provider attempt which model gets how many prompt tokens, counted as
    that provider counts them (the emulator reports exactly that count), the template's words included."""
    models = [
        {
            "name": "first",
            "provider": "openai",
            "upstream_model": "gpt-4o-mini;status=500",
            "fallbacks": ["ok"],
        },
        {"name": "ok", "provider": "anthropic", "upstream_model": "claude-haiku-4-5"},
    ]
    config = upstream_config(upstream, models, retry={"max_attempts": 1})
    async with start_inference(config) as inference:
        asked = await inference.stream("how many tokens?", model="first", report_prompt_sent=True)
        unasked = await inference.stream("how many tokens?", model="first")
    assert asked.error is None and asked.text == unasked.text == "You said: how many tokens?"
    announced = [(before, p.model, p.provider, p.token_encoding) for before, p in asked.prompts_sent]
    assert announced == [(0, "first", "openai", "o200k_base"), (0, "ok", "anthropic", "cl100k_base")]
    # The attempt that answered was billed by the provider for exactly the prompt announced.
    assert asked.prompts_sent[-1][1].prompt_tokens == asked.summary.usage.prompt_tokens > 0
    assert not asked.summary.usage.estimated
    assert unasked.prompts_sent == []


async def test_a_failure_after_tokens_ends_with_partial_usage_and_a_typed_error(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    models = [
        {"name": "cut", "provider": "openai", "upstream_model": "cut;cut_after=2", "fallbacks": ["ok"]},
        {
            "name": "junk",
            "provider": "anthropic",
            "upstream_model": "junk;malformed_after=1",
            "fallbacks": ["ok"],
        },
        {"name": "ok", "provider": "openai", "upstream_model": "ok"},
    ]
    async with start_inference(upstream_config(upstream, models)) as inference:
        for model, sent in (("cut", ["You", " said:"]), ("junk", ["You"])):
            outcome = await inference.stream("one two three", model=model)
            assert outcome.deltas == sent
            assert outcome.error is not None
            assert outcome.error.code == grpc.StatusCode.UNAVAILABLE
            assert outcome.error.reason == "STREAM_INTERRUPTED"
            assert outcome.summary is not None, "the summary comes before the error"
            assert outcome.summary.finish_reason == generation_pb2.FINISH_REASON_ERROR
            assert outcome.summary.usage.completion_tokens >= 1 and outcome.summary.usage.prompt_tokens > 0
            assert outcome.summary.usage.estimated
    assert upstream.requests_for("ok") == [], "no fallback once text reached the caller"


async def test_first_token_timeout_moves_on_and_no_retry_follows_the_first_token(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    models = [
        {
            "name": "slow",
            "provider": "openai",
            "upstream_model": "slow;first_token_delay=3",
            "fallbacks": ["ok"],
        },
        {"name": "ok", "provider": "openai", "upstream_model": "ok"},
    ]
    config = upstream_config(
        upstream, models, retry={"max_attempts": 1}, timeouts={"first_token_seconds": 0.3, "idle_seconds": 5}
    )
    async with start_inference(config) as inference:
        outcome = await inference.stream("quick?")
    assert outcome.error is None
    assert [(a.model, a.reason) for a in outcome.summary.routing.fallback_attempts] == [
        ("slow", "PROVIDER_TIMEOUT")
    ]
    # The fallback started right after the first-token timeout, well before the slow model's first token.
    (slow,) = upstream.requests_for("slow")
    (ok,) = upstream.requests_for("ok")
    assert 0.25 <= ok.arrival - slow.arrival < 2.0


async def test_idle_timeout_after_the_first_token_is_an_interruption(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    models = [{"name": "stall", "provider": "openai", "upstream_model": "stall;chunk_delay=3"}]
    config = upstream_config(upstream, models, timeouts={"first_token_seconds": 5, "idle_seconds": 0.3})
    async with start_inference(config) as inference:
        outcome = await inference.stream("a b c")
    assert outcome.deltas == ["You"]
    assert outcome.error is not None and outcome.error.reason == "STREAM_INTERRUPTED"
    assert outcome.error.error_info is not None
    assert outcome.error.error_info.metadata["cause"] == "PROVIDER_TIMEOUT"
    assert len(upstream.requests_for("stall")) == 1


async def test_the_callers_deadline_bounds_retries(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    models = [{"name": "m", "provider": "openai", "upstream_model": "rl;status=429;retry_after=5"}]
    config = upstream_config(upstream, models, retry={"max_attempts": 5, "max_retry_after_seconds": 60})
    async with start_inference(config) as inference:
        outcome = await inference.stream("hurry", deadline=1.0)
    # Waiting 5 s would overrun the 1 s deadline: no retry, an immediate typed failure with the provider's hint.
    assert len(upstream.requests_for("rl")) == 1
    assert outcome.error is not None
    assert outcome.error.code == grpc.StatusCode.UNAVAILABLE
    assert outcome.error.reason == "ALL_PROVIDERS_UNAVAILABLE"
    assert outcome.error.retry_after == 5.0


async def test_the_callers_deadline_cuts_a_slow_provider(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    models = [
        {"name": "m", "provider": "openai", "upstream_model": "slow;first_token_delay=5", "fallbacks": ["ok"]}
    ]
    async with start_inference(
        upstream_config(upstream, [*models, {"name": "ok", "provider": "local"}])
    ) as inference:
        outcome = await inference.stream("hurry", deadline=0.5)
    assert outcome.error is not None
    assert outcome.error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert outcome.deltas == []
