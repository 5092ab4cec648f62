"""OpenAIEmbedder through the official SDK over real HTTP to a local emulation of /v1/embeddings."""

from __future__ import annotations

import math

import openai
import pytest

from parapet.embeddings import DIMENSION, CachedEmbedder, Embedder, EmbeddingUnavailable
from parapet.embeddings.openai_embedder import OpenAIEmbedder
from parapet.embeddings.testing import OpenAIEmbeddingsEmulator, fake_vector


def _client(emulator: OpenAIEmbeddingsEmulator) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="test-key", base_url=emulator.base_url, max_retries=0)


async def test_embeds_in_order_batched_and_normalised() -> None:
    with OpenAIEmbeddingsEmulator() as emulator:
        embedder = OpenAIEmbedder(_client(emulator), batch_size=2)
        assert isinstance(embedder, Embedder)
        texts = ["one", "two", "three", "four", "five"]
        vectors = await embedder.embed(texts)
    assert [len(r["input"]) for r in emulator.requests] == [2, 2, 1]
    assert all(
        r["dimensions"] == DIMENSION and r["model"] == "text-embedding-3-small" for r in emulator.requests
    )
    for text, vector in zip(texts, vectors, strict=True):
        raw = fake_vector(text, DIMENSION)
        norm = math.sqrt(sum(x * x for x in raw))
        assert vector == pytest.approx([x / norm for x in raw], abs=1e-9)


async def test_server_errors_become_embedding_unavailable() -> None:
    with (
        OpenAIEmbeddingsEmulator(fail_with=503) as emulator,
        pytest.raises(EmbeddingUnavailable, match="unavailable"),
    ):
        await OpenAIEmbedder(_client(emulator)).embed(["x"])
    with (
        OpenAIEmbeddingsEmulator(fail_with=401) as emulator,
        pytest.raises(EmbeddingUnavailable, match="HTTP 401"),
    ):
        await OpenAIEmbedder(_client(emulator)).embed(["x"])


async def test_wrong_dimension_is_refused() -> None:
    with (
        OpenAIEmbeddingsEmulator(answer_dimension=1536) as emulator,
        pytest.raises(EmbeddingUnavailable, match="1536 dimensions"),
    ):
        await OpenAIEmbedder(_client(emulator)).embed(["x"])


async def test_unreachable_provider_is_unavailable() -> None:
    with OpenAIEmbeddingsEmulator() as emulator:
        url = emulator.base_url
    client = openai.AsyncOpenAI(api_key="k", base_url=url, max_retries=0, timeout=2.0)
    with pytest.raises(EmbeddingUnavailable):
        await OpenAIEmbedder(client).embed(["x"])


async def test_cache_in_front_of_the_provider_sends_each_text_once() -> None:
    with OpenAIEmbeddingsEmulator() as emulator:
        cache = CachedEmbedder(OpenAIEmbedder(_client(emulator)))
        await cache.embed(["a", "b", "a"])
        await cache.embed(["b", "a"])
    assert [r["input"] for r in emulator.requests] == [["a", "b"]]
