"""Finish reasons the providers report, as the official SDKs send and read them over real HTTP (the emulator's
``finish=`` reports any raw value): a cut answer is LENGTH, a refusal CONTENT_FILTER, and a reason the adapter
does not know is never taken for a complete answer (STOP): it is reported as LENGTH, logged once as a warning
naming it, and not cached. Before, both adapters mapped every reason they did not know to STOP, so Anthropic's
``model_context_window_exceeded`` (the answer was cut), its ``pause_turn``, and a self-hosted server's ``abort``
were reported, billed and cached as complete answers, served for the TTL to every equal question."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from parapet.inference.v1 import cache_pb2, generation_pb2, inference_service_pb2, message_pb2
from parapet.upstream import UpstreamServer
from tests.integration.inference.conftest import (
    Inference,
    StartInference,
    principal,
    settle_writes,
    until_cached,
    upstream_config,
)

QUESTION = "What does the contract say about notice periods?"
REPLY = "One+month+of+notice+on+either+side"
LENGTH = generation_pb2.FINISH_REASON_LENGTH
CONTENT_FILTER = generation_pb2.FINISH_REASON_CONTENT_FILTER

# (model, provider, the raw reason the provider reports, what the summary says, whether it is unknown)
CASES: list[tuple[str, str, str, int, bool]] = [
    ("claude-window", "anthropic", "model_context_window_exceeded", LENGTH, False),
    ("claude-paused", "anthropic", "pause_turn", LENGTH, False),
    ("claude-refusal", "anthropic", "refusal", CONTENT_FILTER, False),
    ("claude-new", "anthropic", "a_reason_anthropic_adds_later", LENGTH, True),
    ("gpt-filtered", "openai", "content_filter", CONTENT_FILTER, False),
    ("gpt-new", "openai", "a_reason_openai_adds_later", LENGTH, True),
    ("self-hosted-abort", "selfhosted", "abort", LENGTH, True),
    ("self-hosted-window", "selfhosted", "model_length", LENGTH, False),
]
# What OpenAI-compatible servers say for an answer that ended on its own: complete, cached like OpenAI's "stop".
COMPLETE_ALIASES = ["eos", "eos_token", "stop_sequence", "end_turn"]


def _config(upstream: UpstreamServer) -> dict[str, Any]:
    models = [
        {"name": "gpt", "provider": "openai", "upstream_model": f"gpt-4o-mini;reply={REPLY}"},
        *(
            {"name": name, "provider": provider, "upstream_model": f"{name};finish={raw};reply={REPLY}"}
            for name, provider, raw, _, _ in CASES
        ),
        *(
            {
                "name": f"self-hosted-{raw}",
                "provider": "selfhosted",
                "upstream_model": f"m;finish={raw};reply={REPLY}",
            }
            for raw in COMPLETE_ALIASES
        ),
    ]
    config = upstream_config(upstream, models)
    # vLLM, llama.cpp, Ollama: the OpenAI wire format from a server of our own.
    config["providers"]["selfhosted"] = {"kind": "openai_compatible", "base_url": upstream.base_url + "/v1"}
    return config


async def _complete(inference: Inference, model: str, who: Any) -> inference_service_pb2.CompleteResponse:
    request = inference_service_pb2.CompleteRequest(
        messages=[message_pb2.Message(role=message_pb2.ROLE_USER, content=QUESTION)],
        model=model,
        cache_mode=cache_pb2.CACHE_MODE_DISABLED,
    )
    response: inference_service_pb2.CompleteResponse = await inference.stub.Complete(
        request, metadata=inference.metadata(who), timeout=20
    )
    return response


async def test_cut_refused_and_unknown_finishes_are_never_complete_answers(
    start_inference: StartInference, upstream: UpstreamServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    who = principal(f"finish-{uuid.uuid4().hex[:8]}")
    async with start_inference(_config(upstream), cache_enabled=True) as inference:
        # The control: a complete answer is stored and served again, so a miss below means "not stored".
        await inference.stream(QUESTION, who=who, model="gpt")
        control = await until_cached(inference, QUESTION, who, model="gpt")
        assert control.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT
        for name, _, raw, expected, _ in CASES:
            streamed = await inference.stream(QUESTION, who=who, model=name)
            assert streamed.error is None, (name, streamed.error)
            assert streamed.text == REPLY.replace("+", " "), name
            assert streamed.summary.finish_reason == expected, (name, raw, streamed.summary.finish_reason)
            unary = await _complete(inference, name, who)
            assert unary.text == streamed.text, name
            assert unary.summary.finish_reason == expected, (name, raw, unary.summary.finish_reason)
            await settle_writes(inference, who.tenant_id)
            again = await inference.stream(QUESTION, who=who, model=name)
            assert again.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS, (name, raw)
            assert again.summary.finish_reason == expected, name
            assert len(upstream.requests_for(name)) == 3, (name, "every request reached the model")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name, _, raw, _, unknown in CASES:
        naming = [message for message in warned if repr(raw) in message]
        # Three answers finished with it; an operator is told once (per provider), not once per answer.
        assert len(naming) == (1 if unknown else 0), (name, raw, warned)


async def test_a_self_hosted_servers_words_for_a_complete_answer_are_stop_and_cached(
    start_inference: StartInference, upstream: UpstreamServer, caplog: pytest.LogCaptureFixture
) -> None:
    """TGI's ``eos_token``, Together's ``eos``, a proxy's ``end_turn``: an answer that ended on its own. Read as
    unknown, it was reported to callers as possibly cut off (some then ask for more) and never cached."""
    caplog.set_level(logging.WARNING)
    who = principal(f"finish-ok-{uuid.uuid4().hex[:8]}")
    async with start_inference(_config(upstream), cache_enabled=True) as inference:
        for raw in COMPLETE_ALIASES:
            name = f"self-hosted-{raw}"
            streamed = await inference.stream(QUESTION, who=who, model=name)
            assert streamed.summary.finish_reason == generation_pb2.FINISH_REASON_STOP, (raw, streamed.error)
            cached = await until_cached(inference, QUESTION, who, model=name)
            assert cached.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT, raw
    assert not [
        r for r in caplog.records if r.levelno == logging.WARNING and "finish reason" in r.getMessage()
    ]
