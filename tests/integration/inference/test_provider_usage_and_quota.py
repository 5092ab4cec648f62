"""Provider answers whose usage or errors need reading closely, through the official SDKs over real HTTP
against the emulator: Anthropic's prompt-cache tokens, its prompt count on a stream that breaks off, and
OpenAI's exhausted-quota 429."""

from __future__ import annotations

import grpc

from parapet.inference.v1 import generation_pb2
from parapet.upstream import UpstreamServer
from tests.integration.inference.conftest import StartInference, upstream_config

CLAUDE = {
    "provider": "anthropic",
    "input_price_per_million": "1",
    "cached_input_price_per_million": "0.1",
    "output_price_per_million": "5",
}


async def test_anthropic_cache_writes_and_reads_are_part_of_the_prompt(
    upstream: UpstreamServer, start_inference: StartInference
) -> None:
    """Anthropic's input_tokens leaves out the tokens written to and read from its prompt cache: all were
    sent. Before, the writes were left out of the prompt (and of the cost)."""
    spec = "claude-haiku-4-5;prompt_tokens=1150;cache_read=50;cache_write=100"
    config = upstream_config(upstream, [{**CLAUDE, "name": "claude", "upstream_model": spec}])
    async with start_inference(config) as inference:
        outcome = await inference.stream("hello?")
    assert outcome.error is None
    usage = outcome.summary.usage
    assert (usage.prompt_tokens, usage.cached_tokens) == (1150, 50)
    assert usage.completion_tokens > 0 and not usage.estimated


async def test_an_anthropic_stream_broken_after_message_start_bills_the_prompt_anthropic_counted(
    upstream: UpstreamServer, start_inference: StartInference
) -> None:
    """message_start carries Anthropic's count of the prompt; a stream that broke afterwards was billed our
    offline cl100k estimate instead (Claude's tokenizer is not cl100k). The output is still counted by us."""
    spec = "claude-haiku-4-5;prompt_tokens=4321;cut_after=2"
    config = upstream_config(
        upstream,
        [{**CLAUDE, "name": "claude", "upstream_model": spec}],
        retry={"max_attempts": 1},
    )
    async with start_inference(config) as inference:
        outcome = await inference.stream("tell me about the weather today please")
    assert outcome.error is not None and outcome.error.reason == "STREAM_INTERRUPTED"
    assert outcome.summary.finish_reason == generation_pb2.FINISH_REASON_ERROR
    usage = outcome.summary.usage
    assert usage.prompt_tokens == 4321
    assert usage.completion_tokens > 0 and usage.estimated


async def test_an_exhausted_openai_quota_is_not_retried_and_falls_back(
    upstream: UpstreamServer, start_inference: StartInference
) -> None:
    """OpenAI answers an exhausted account with HTTP 429 `insufficient_quota`: no wait cures it. It was retried
    like a rate limit (max_attempts calls, with backoff) before the fallback answered."""
    spec = "gpt-4o-mini;status=429;error_type=insufficient_quota"
    config = upstream_config(
        upstream,
        [
            {"name": "gpt", "provider": "openai", "upstream_model": spec, "fallbacks": ["local"]},
            {"name": "local", "provider": "local"},
        ],
    )
    async with start_inference(config) as inference:
        outcome = await inference.stream("hello?")
    assert outcome.error is None
    routing = outcome.summary.routing
    assert routing.model == "local"
    assert [(a.model, a.reason) for a in routing.fallback_attempts] == [("gpt", "PROVIDER_UNAVAILABLE")]
    assert sum(1 for r in upstream.requests if r.api == "openai") == 1, "an exhausted quota was retried"


async def test_a_model_the_provider_no_longer_has_falls_back_instead_of_refusing_the_caller(
    upstream: UpstreamServer, start_inference: StartInference
) -> None:
    """A provider answers 404 for a model it does not have (retired, or misnamed in our configuration): the
    caller can change nothing about it, yet it was INVALID_ARGUMENT PROVIDER_REJECTED with no fallback."""
    spec = "gpt-retired;status=404"
    config = upstream_config(
        upstream,
        [
            {"name": "old", "provider": "openai", "upstream_model": spec, "fallbacks": ["local"]},
            {"name": "local", "provider": "local"},
        ],
    )
    async with start_inference(config) as inference:
        outcome = await inference.stream("hello?")
        assert outcome.error is None, outcome.error
        assert outcome.summary.routing.model == "local"
        assert [(a.model, a.reason) for a in outcome.summary.routing.fallback_attempts] == [
            ("old", "PROVIDER_UNAVAILABLE")
        ]
        assert sum(1 for r in upstream.requests if r.api == "openai") == 1, "retried although no retry helps"


async def test_an_anthropic_stream_we_stop_after_message_start_bills_the_prompt_anthropic_counted(
    upstream: UpstreamServer, start_inference: StartInference
) -> None:
    """The same count when it is we who end the stream after the first token: a stall past the idle timeout,
    or the caller's deadline. Both ended the provider's stream from outside, so the prompt count message_start
    had brought was lost and our cl100k estimate (a few dozen tokens here) was billed instead."""
    stall = "claude-haiku-4-5;prompt_tokens=4321;chunk_delay=3"
    slow = "claude-haiku-4-5;prompt_tokens=4321;chunk_delay=0.4"
    config = upstream_config(
        upstream,
        [
            {**CLAUDE, "name": "stall", "upstream_model": stall},
            {**CLAUDE, "name": "slow", "upstream_model": slow, "provider": "patient"},
        ],
        retry={"max_attempts": 1},
        timeouts={"connect_seconds": 1.0, "first_token_seconds": 5.0, "idle_seconds": 0.3},
    )
    config["providers"]["patient"] = {**config["providers"]["anthropic"], "timeouts": {"idle_seconds": 5.0}}
    async with start_inference(config) as inference:
        idle = await inference.stream("tell me about the weather today please", model="stall")
        late = await inference.stream(
            "one two three four five six seven eight nine", model="slow", deadline=1.5
        )
    assert idle.error is not None and idle.error.reason == "STREAM_INTERRUPTED"
    assert idle.deltas == ["You"]
    assert idle.summary.finish_reason == generation_pb2.FINISH_REASON_ERROR
    assert idle.summary.usage.prompt_tokens == 4321, idle.summary.usage
    assert idle.summary.usage.completion_tokens > 0 and idle.summary.usage.estimated
    assert late.error is not None and late.error.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert late.summary is not None and late.summary.finish_reason == generation_pb2.FINISH_REASON_ERROR
    usage = late.summary.usage
    assert usage.prompt_tokens == 4321, usage
    # The cost follows the counts: the prompt at 1 per million tokens, the output at 5.
    assert late.summary.cost.amount_micros == usage.prompt_tokens + 5 * usage.completion_tokens
