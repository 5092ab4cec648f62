"""An error event inside a stream (HTTP 200, then ``event: error``), through the official SDKs over real HTTP:
judged like the same error answered before the stream. A mid-stream Anthropic ``rate_limit_error`` was
INVALID_ARGUMENT PROVIDER_REJECTED, never retried nor fallen back, and counted as a healthy call by the breaker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from parapet.inference.v1 import inference_service_pb2, model_pb2
from parapet.upstream import UpstreamServer
from services.inference.config import ProviderConfig, Timeouts
from services.inference.providers.anthropic import AnthropicProvider
from services.inference.providers.base import PromptMessage, ProviderError, ProviderRequest
from services.inference.providers.openai import OpenAIProvider
from tests.integration.inference.conftest import StartInference, upstream_config


def error_event(error_type: str, *, after: int, times: int | None = None, name: str = "echo") -> str:
    """An upstream model whose streamed answer sends ``after`` words, then an error event of ``error_type``
    in the API's own shape (the emulator's ``error_after`` fault); only the first ``times`` requests."""
    spec = f"{name};error_after={after};error_type={error_type}"
    return spec if times is None else f"{spec};times={times}"


@pytest.fixture
async def events_upstream() -> AsyncIterator[UpstreamServer]:
    server = UpstreamServer()
    async with server:
        yield server


async def _provider_error(provider: AnthropicProvider | OpenAIProvider, model: str) -> ProviderError:
    request = ProviderRequest(model=model, system="", messages=(PromptMessage("user", "hi"),))
    with pytest.raises(ProviderError) as caught:
        async for _ in provider.stream(request):
            pass
    return caught.value


@pytest.mark.parametrize(
    ("error_type", "kind", "retryable"),
    [
        ("rate_limit_error", "rate_limited", True),
        ("overloaded_error", "unavailable", True),
        ("api_error", "unavailable", True),
        ("timeout_error", "timeout", True),
        ("invalid_request_error", "rejected", False),
        ("request_too_large", "rejected", False),
        # Our key, account or configuration (a model the provider does not have): not the caller's fault, and
        # no retry of the same provider helps; the next may.
        ("not_found_error", "unavailable", False),
        ("authentication_error", "unavailable", False),
        ("permission_error", "unavailable", False),
        ("billing_error", "unavailable", False),
        ("some_future_error", "interrupted", True),
    ],
)
async def test_each_anthropic_error_type_mid_stream_is_its_kind(
    events_upstream: UpstreamServer, error_type: str, kind: str, retryable: bool
) -> None:
    config = ProviderConfig(kind="anthropic", base_url=events_upstream.base_url)
    provider = AnthropicProvider("anthropic", config, Timeouts())
    try:
        error = await _provider_error(provider, error_event(error_type, after=1))
    finally:
        await provider.close()
    assert (error.kind, error.retryable) == (kind, retryable)
    assert "emulated" not in error.message  # our sentence, never the provider's text


@pytest.mark.parametrize(
    ("error_type", "kind"),
    [
        ("server_error", "unavailable"),
        ("rate_limit_exceeded", "rate_limited"),
        ("invalid_request_error", "rejected"),
        ("unknown_thing", "interrupted"),
    ],
)
async def test_an_openai_error_chunk_mid_stream_is_its_kind(
    events_upstream: UpstreamServer, error_type: str, kind: str
) -> None:
    config = ProviderConfig(kind="openai", base_url=events_upstream.base_url + "/v1")
    provider = OpenAIProvider("openai", config, Timeouts())
    try:
        error = await _provider_error(provider, error_event(error_type, after=1))
    finally:
        await provider.close()
    assert error.kind == kind


async def test_a_mid_stream_rate_limit_is_retried_fallen_back_and_counted_by_the_breaker(
    start_inference: StartInference, events_upstream: UpstreamServer
) -> None:
    models = [
        # Rate-limited once, before any text: retried on the same model, which then answers.
        {
            "name": "once",
            "provider": "anthropic",
            "upstream_model": error_event("rate_limit_error", after=0, times=1, name="once"),
        },
        # Always rate-limited (or overloaded): the fallback answers, each failure named for what it was.
        {
            "name": "limited",
            "provider": "anthropic",
            "upstream_model": error_event("rate_limit_error", after=0),
            "fallbacks": ["busy", "ok"],
        },
        {"name": "busy", "provider": "anthropic", "upstream_model": error_event("overloaded_error", after=0)},
        {"name": "ok", "provider": "local"},
        # The request's own fault: the caller's error, at once.
        {
            "name": "invalid",
            "provider": "anthropic",
            "upstream_model": error_event("invalid_request_error", after=0),
        },
        # After text went out: interrupted, with the cause.
        {"name": "late", "provider": "anthropic", "upstream_model": error_event("rate_limit_error", after=2)},
    ]
    config = upstream_config(
        events_upstream,
        models,
        retry={"max_attempts": 2, "base_delay_seconds": 0.01},
        breaker={"window": 4, "min_calls": 2, "failure_ratio": 1.0, "open_seconds": 60, "half_open_calls": 1},
    )
    async with start_inference(config) as inference:
        retried = await inference.stream("hello there", model="once")
        assert retried.error is None, retried.error
        assert retried.text == "You said: hello there"
        assert len(events_upstream.requests_for("once")) == 2

        fallen = await inference.stream("hello", model="limited")
        assert fallen.error is None, fallen.error
        assert fallen.summary.routing.model == "ok"
        assert [(a.model, a.reason) for a in fallen.summary.routing.fallback_attempts] == [
            ("limited", "PROVIDER_RATE_LIMITED"),
            ("busy", "PROVIDER_UNAVAILABLE"),
        ]
        # Two failed attempts on `limited` (one retry): failures to the breaker, which opened.
        listed = await inference.stub.ListModels(
            inference_service_pb2.ListModelsRequest(), metadata=inference.metadata()
        )
        states = {m.model: m.circuit_state for m in listed.models}
        assert states["limited"] == model_pb2.CIRCUIT_STATE_OPEN

        invalid = await inference.stream("hello", model="invalid")
        assert invalid.error is not None
        assert (invalid.error.code, invalid.error.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "PROVIDER_REJECTED",
        )

        late = await inference.stream("hello", model="late")
        assert late.deltas and late.error is not None
        assert (late.error.code, late.error.reason) == (grpc.StatusCode.UNAVAILABLE, "STREAM_INTERRUPTED")
        assert late.error.error_info is not None
        assert late.error.error_info.metadata["cause"] == "PROVIDER_RATE_LIMITED"
