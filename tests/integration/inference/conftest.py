"""Fixtures of the inference integration tests: the fault-injecting upstream, and a running inference service
built from a configuration dict, called over a real channel with real identity tokens."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from parapet.inference.v1 import cache_pb2, inference_service_pb2, inference_service_pb2_grpc, message_pb2
from parapet.kit.errors import ErrorDetails, error_details
from parapet.kit.identity import Principal
from parapet.kit.testing import TestKeys, make_test_keys, running
from parapet.upstream import UpstreamServer
from services.inference.app import APP
from services.inference.settings import InferenceSettings


@pytest.fixture
async def upstream() -> AsyncIterator[UpstreamServer]:
    async with UpstreamServer() as server:
        yield server


@pytest.fixture(scope="module")
def keys() -> TestKeys:
    return make_test_keys()


def principal(tenant: str = "tenant-a", subject: str = "user-1", groups: tuple[str, ...] = ()) -> Principal:
    return Principal(tenant_id=tenant, subject=subject, roles=("member",), groups=groups)


@dataclass
class Outcome:
    """What a StreamComplete call produced: every delta, the summary, and the error (if it failed)."""

    deltas: list[str]
    summary: Any
    error: ErrorDetails | None
    # The PromptSent messages (report_prompt_sent), each with the number of deltas that came before it.
    prompts_sent: list[tuple[int, Any]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.deltas)


@dataclass
class Inference:
    stub: inference_service_pb2_grpc.InferenceServiceStub
    keys: TestKeys
    settings: InferenceSettings

    def metadata(self, who: Principal | None = None) -> tuple[tuple[str, str], ...]:
        return self.keys.metadata(who or principal())

    async def stream(
        self,
        question: str = "What is the capital of France?",
        *,
        who: Principal | None = None,
        deadline: float | None = 20.0,
        **fields: Any,
    ) -> Outcome:
        request = inference_service_pb2.StreamCompleteRequest(
            messages=[message_pb2.Message(role=message_pb2.ROLE_USER, content=question)], **fields
        )
        deltas: list[str] = []
        summary = None
        prompts_sent: list[tuple[int, Any]] = []
        try:
            async for message in self.stub.StreamComplete(
                request, metadata=self.metadata(who), timeout=deadline
            ):
                if message.HasField("prompt_sent"):
                    assert summary is None, "a PromptSent after the summary"
                    prompts_sent.append((len(deltas), message.prompt_sent))
                elif message.HasField("text_delta"):
                    assert summary is None, "a delta after the summary"
                    deltas.append(message.text_delta.text)
                else:
                    assert summary is None, "two summaries"
                    summary = message.summary
        except grpc.aio.AioRpcError as exc:
            return Outcome(deltas, summary, error_details(exc), prompts_sent)
        return Outcome(deltas, summary, None, prompts_sent)


StartInference = Callable[..., AbstractAsyncContextManager[Inference]]


@pytest.fixture
def start_inference(tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str) -> StartInference:
    """``async with start_inference(config_dict, **settings) as inference:`` a service on port 0."""

    @asynccontextmanager
    async def start(config: dict[str, Any] | None = None, **overrides: Any) -> AsyncIterator[Inference]:
        jwks_file = tmp_path / "jwks.json"
        jwks_file.write_text(json.dumps(keys.jwks()))
        values: dict[str, Any] = {
            "port": 0,
            "database_url": database_url,
            "nats_url": nats_url,
            "identity_jwks_file": jwks_file,
            "shutdown_grace_seconds": 1.0,
            "cache_enabled": False,
        }
        if config is not None:
            config_file = tmp_path / f"inference-{uuid.uuid4().hex[:8]}.json"
            config_file.write_text(json.dumps(config))
            values["inference_config_file"] = config_file
        values.update(overrides)
        settings = InferenceSettings(**values)
        async with (
            running(APP, settings) as (_server, port),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            yield Inference(inference_service_pb2_grpc.InferenceServiceStub(channel), keys, settings)

    return start


def upstream_config(
    upstream: UpstreamServer,
    models: list[Any],
    *,
    routes: list[Any] | None = None,
    default_model: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A configuration whose `openai` and `anthropic` providers are the emulator."""
    config: dict[str, Any] = {
        "default_model": default_model or models[0]["name"],
        "providers": {
            "openai": {
                "kind": "openai",
                "base_url": upstream.base_url + "/v1",
                "api_key_env": "TEST_OPENAI_KEY",
            },
            "anthropic": {
                "kind": "anthropic",
                "base_url": upstream.base_url,
                "api_key_env": "TEST_ANTHROPIC_KEY",
            },
            "local": {"kind": "local"},
        },
        "models": models,
        "routes": routes or [],
        "retry": {"max_attempts": 3, "base_delay_seconds": 0.02, "max_delay_seconds": 0.1},
        "timeouts": {"connect_seconds": 1.0, "first_token_seconds": 5.0, "idle_seconds": 5.0},
    }
    config.update(extra)
    return config


async def until_cached(inference: Inference, question: str, who: Principal, **fields: Any) -> Outcome:
    """The answer is stored after the summary went out; poll briefly until the entry is visible.

    A probe racing the store's commit may see the entry only on its second (semantic) query, at similarity 1;
    the loop waits for the settled state, an exact hit."""
    deadline = time.monotonic() + 5
    while True:
        outcome = await inference.stream(question, who=who, **fields)
        if outcome.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT or time.monotonic() > deadline:
            return outcome
        await asyncio.sleep(0.05)


async def settle_writes(inference: Inference, tenant: str) -> None:
    """Returns once this replica's pending cache writes have landed (DeleteCacheEntries waits for them first)."""
    admin = Principal(tenant_id=tenant, subject="ops", roles=("admin",))
    await inference.stub.DeleteCacheEntries(
        inference_service_pb2.DeleteCacheEntriesRequest(user_id="nobody"),
        metadata=inference.metadata(admin),
        timeout=10,
    )
