"""Edges of a stream found in review: the caller's deadline after the first token, and what each provider kind
is sent for the output limit."""

from __future__ import annotations

import grpc

from parapet.inference.v1 import cache_pb2, generation_pb2
from parapet.upstream import UpstreamServer
from tests.integration.inference.conftest import StartInference, upstream_config


async def test_a_deadline_after_the_first_token_still_ends_with_the_summary(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    """The contract: a failure after the first delta ends the stream with a FINISH_REASON_ERROR summary (the
    usage so far), then the status. The caller's deadline passing mid-answer used to end it with the status
    only, so what the provider had already produced (and billed) was reported to nobody."""
    models = [
        {
            "name": "m",
            "provider": "openai",
            "upstream_model": "gpt-4o-mini;chunk_delay=1.0",
            "input_price_per_million": "1",
            "output_price_per_million": "1",
        }
    ]
    async with start_inference(upstream_config(upstream, models)) as inference:
        outcome = await inference.stream("one two three four five six seven eight", deadline=3.0)
    assert outcome.deltas[:1] == ["You"] and len(outcome.deltas) < 10
    assert outcome.error is not None and outcome.error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert outcome.summary is not None, "the summary comes before the status"
    assert outcome.summary.finish_reason == generation_pb2.FINISH_REASON_ERROR
    usage = outcome.summary.usage
    assert usage.estimated and usage.prompt_tokens > 0 and usage.completion_tokens >= len(outcome.deltas)
    assert outcome.summary.cost.amount_micros == usage.prompt_tokens + usage.completion_tokens
    assert outcome.summary.routing.model == "m"
    # The cache is off here: the summary says so (it said MISS on every interrupted answer before).
    assert outcome.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_BYPASSED


async def test_openai_gets_max_completion_tokens_and_compatible_servers_max_tokens(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    """OpenAI deprecated `max_tokens` for `max_completion_tokens` and refuses it (HTTP 400) for its reasoning
    models (o-series, GPT-5: the SDK's own documentation of the parameter); self-hosted OpenAI-compatible servers
    (llama.cpp, vLLM) know `max_tokens`."""
    config = upstream_config(
        upstream,
        [
            {"name": "gpt", "provider": "openai", "upstream_model": "gpt-5-mini"},
            {"name": "self", "provider": "selfhosted", "upstream_model": "llama"},
        ],
    )
    config["providers"]["selfhosted"] = {"kind": "openai_compatible", "base_url": upstream.base_url + "/v1"}
    limit = generation_pb2.GenerationConfig(max_tokens=50)
    async with start_inference(config) as inference:
        for model in ("gpt", "self"):
            outcome = await inference.stream("hello", model=model, generation=limit)
            assert outcome.error is None, outcome.error
    (openai_body,) = [r.body for r in upstream.requests_for("gpt-5-mini")]
    (compatible_body,) = [r.body for r in upstream.requests_for("llama")]
    assert openai_body.get("max_completion_tokens") == 50 and "max_tokens" not in openai_body
    assert compatible_body.get("max_tokens") == 50 and "max_completion_tokens" not in compatible_body


async def test_a_model_s_refused_parameters_are_left_out_of_its_requests_only(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    """OpenAI's reasoning models refuse a temperature or top_p, and failed every request that set one
    PROVIDER_REJECTED, also a request whose route would have fallen back to a model taking them. A model's
    drop_parameters leaves them out of its own requests; its fallback still gets them."""
    config = upstream_config(
        upstream,
        [
            {
                "name": "reasoner",
                "provider": "openai",
                "upstream_model": "o4-mini",
                "drop_parameters": ["temperature", "top_p"],
                "fallbacks": ["plain"],
            },
            {"name": "plain", "provider": "openai", "upstream_model": "gpt-4o-mini"},
        ],
    )
    sampling = generation_pb2.GenerationConfig(temperature=0.3, top_p=0.9, seed=7, stop=["zz"])
    async with start_inference(config) as inference:
        for model in ("reasoner", "plain"):
            outcome = await inference.stream("hello", model=model, generation=sampling)
            assert outcome.error is None, outcome.error
    (reasoner,) = [r.body for r in upstream.requests_for("o4-mini")]
    (plain,) = [r.body for r in upstream.requests_for("gpt-4o-mini")]
    assert "temperature" not in reasoner and "top_p" not in reasoner
    assert reasoner["seed"] == 7 and reasoner["stop"] == ["zz"]
    assert plain["temperature"] == 0.3 and abs(plain["top_p"] - 0.9) < 1e-6 and plain["seed"] == 7


async def test_anthropic_gets_the_models_output_limit_when_the_request_sets_none(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    """Anthropic requires max_tokens. A request that set none ("unset = the model's default", the contract)
    was sent 1024 whatever the model's configured max_output_tokens, so a long answer came back cut at 1024
    tokens, FINISH_REASON_LENGTH, where an OpenAI model of the same configuration answered in full."""
    config = upstream_config(
        upstream,
        [
            {
                "name": "claude",
                "provider": "anthropic",
                "upstream_model": "claude-sonnet",
                "max_output_tokens": 8192,
            },
            {"name": "haiku", "provider": "anthropic", "upstream_model": "claude-haiku"},
        ],
    )
    async with start_inference(config) as inference:
        for model in ("claude", "haiku"):
            outcome = await inference.stream("hello", model=model)
            assert outcome.error is None, outcome.error
        limited = await inference.stream(
            "hello", model="claude", generation=generation_pb2.GenerationConfig(max_tokens=50)
        )
        assert limited.error is None, limited.error
    sonnet = [r.body["max_tokens"] for r in upstream.requests_for("claude-sonnet")]
    (haiku,) = [r.body["max_tokens"] for r in upstream.requests_for("claude-haiku")]
    assert sonnet == [8192, 50]
    assert haiku == 4096  # the configuration's default max_output_tokens
