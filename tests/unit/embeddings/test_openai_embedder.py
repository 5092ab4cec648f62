"""OpenAIEmbedder through the official SDK over real HTTP to a local emulation of /v1/embeddings."""

from __future__ import annotations

import asyncio
import math

import openai
import pytest

from parapet.embeddings import (
    DIMENSION,
    CachedEmbedder,
    Embedder,
    EmbeddingRejected,
    EmbeddingUnavailable,
    embed_own,
)
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


async def test_a_text_the_provider_refuses_is_rejected_for_good_and_the_others_embedded() -> None:
    """A 400 for an input over the model's limit is the text's fault: retrying it can never succeed. Until
    2026-12-06 it was EmbeddingUnavailable, so its document was retried forever."""
    long_text = "x" * 60
    texts = ["one", long_text, "two", "three", "four"]
    with OpenAIEmbeddingsEmulator(max_input_chars=50) as emulator:
        embedder = OpenAIEmbedder(_client(emulator), batch_size=4)
        with pytest.raises(EmbeddingRejected) as raised:
            await embedder.embed(texts)
        # Only the refused text is named, with the provider's reason.
        assert list(raised.value.refused) == [long_text]
        assert "HTTP 400" in raised.value.refused[long_text]
        assert "maximum context length" in raised.value.refused[long_text]
        # The same text is refused again: a rejection, not an outage.
        with pytest.raises(EmbeddingRejected):
            await embedder.embed([long_text])


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_a_provider_refusing_every_request_is_unavailable_not_a_rejection(status: int) -> None:
    """A model that does not exist (404), or that cannot shorten its vectors (400), refuses every text: that is
    the deployment's fault, not any document's, so documents must not be rejected for good."""
    with (
        OpenAIEmbeddingsEmulator(fail_with=status) as emulator,
        pytest.raises(EmbeddingUnavailable, match=f"HTTP {status}"),
    ):
        await OpenAIEmbedder(_client(emulator)).embed(["x"])


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_throttling_and_server_errors_stay_retryable(status: int) -> None:
    with OpenAIEmbeddingsEmulator(fail_with=status) as emulator, pytest.raises(EmbeddingUnavailable):
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


async def test_a_caller_sharing_a_refused_computation_gets_its_own_answer_not_the_other_s_refusal() -> None:
    """The cache shares one provider call between callers asking for the same text: a question equal to a
    chunk a concurrent ingestion embeds beside a text the provider refuses got that refusal (a valid query
    answered QUERY_NOT_EMBEDDABLE, or INTERNAL with two refused texts). ``embed_own`` asks again instead, and
    a refusal of the caller's own text still names only it."""
    long_text = "x" * 60
    with OpenAIEmbeddingsEmulator(max_input_chars=50) as emulator:
        cache = CachedEmbedder(OpenAIEmbedder(_client(emulator)))
        ingesting = asyncio.ensure_future(embed_own(cache, ["what is the refund policy?", long_text]))
        await asyncio.sleep(0)  # its provider call is under way, the question's vector among it
        (vector,) = await embed_own(cache, ["what is the refund policy?"])
        with pytest.raises(EmbeddingRejected) as refused:
            await ingesting
    assert len(vector) == DIMENSION
    assert list(refused.value.refused) == [long_text]
