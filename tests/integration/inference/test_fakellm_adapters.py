"""The openai and anthropic providers through the official SDKs over real HTTP against `fakellm`, a third-party
emulator of both wire formats: what our adapters send is what a real API accepts, and its streams parse."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from parapet import tokens
from parapet.embedded import free_port
from parapet.inference.v1 import generation_pb2
from tests.integration.inference.conftest import StartInference

RULES = {
    "version": 1,
    "rules": [
        {
            "name": "capital",
            "when": {"messages_contain": "capital of france"},
            "respond": {"content": "Paris is the capital of France."},
        }
    ],
}


@pytest.fixture(scope="module")
def fakellm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fakellm server process on a free port; yields its base URL."""
    config = tmp_path_factory.mktemp("fakellm") / "fakellm.yaml"
    config.write_text(json.dumps(RULES))  # JSON is YAML
    port = free_port()
    log = Path(config.parent / "fakellm.log").open("w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [sys.executable, "-m", "fakellm.cli", "serve", "--port", str(port), "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert process.poll() is None, (config.parent / "fakellm.log").read_text()
                assert time.monotonic() < deadline, "fakellm did not start"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def _config(base_url: str) -> dict[str, object]:
    return {
        "default_model": "gpt",
        "providers": {
            "openai": {"kind": "openai", "base_url": base_url + "/v1", "api_key_env": "NO_SUCH_KEY"},
            "anthropic": {"kind": "anthropic", "base_url": base_url, "api_key_env": "NO_SUCH_KEY"},
        },
        "models": [
            {"name": "gpt", "provider": "openai", "upstream_model": "gpt-4o-mini"},
            {"name": "claude", "provider": "anthropic", "upstream_model": "claude-haiku-4-5"},
        ],
    }


async def test_openai_stream_through_fakellm_is_forwarded_and_usage_estimated(
    start_inference: StartInference, fakellm: str
) -> None:
    async with start_inference(_config(fakellm)) as inference:
        outcome = await inference.stream("What is the capital of France?", model="gpt")
    assert outcome.error is None
    assert outcome.deltas == ["Paris", " is", " the", " capital", " of", " France."]
    assert outcome.summary.finish_reason == generation_pb2.FINISH_REASON_STOP
    # fakellm's OpenAI streams carry no usage: counted offline (o200k for gpt-4o-mini) and marked estimated.
    assert outcome.summary.usage.estimated
    assert outcome.summary.usage.completion_tokens == tokens.count(outcome.text, "o200k_base")
    assert outcome.summary.usage.prompt_tokens > 0


async def test_anthropic_stream_through_fakellm_reports_the_providers_usage(
    start_inference: StartInference, fakellm: str
) -> None:
    async with start_inference(_config(fakellm)) as inference:
        outcome = await inference.stream("What is the capital of France?", model="claude")
    assert outcome.error is None
    assert outcome.text == "Paris is the capital of France."
    assert len(outcome.deltas) == 6
    # fakellm's message_start says input_tokens=1 and its message_delta output_tokens=len(text)//4: taken as
    # reported (not estimated), which shows the numbers come from the provider's events, not our counter.
    assert not outcome.summary.usage.estimated
    assert outcome.summary.usage.prompt_tokens == 1
    assert outcome.summary.usage.completion_tokens == len(outcome.text) // 4
