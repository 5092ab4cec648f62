"""Embeddings from the OpenAI API (or any server speaking its /v1/embeddings), via the official SDK.

The model is asked for `DIMENSION` dimensions (text-embedding-3-* support shortening), so its vectors
fit the same stores as the local model's; they are re-normalised because shortened vectors need not
be unit length. A different model id keeps them apart from MiniLM vectors.
"""

import math
from collections.abc import Sequence

import openai

from parapet.embeddings.protocol import DIMENSION, EmbeddingUnavailable, Vector

DEFAULT_MODEL = "text-embedding-3-small"
#: The API accepts at most 2048 inputs per request.
MAX_BATCH = 2048


def _normalise(vector: list[float]) -> Vector:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


class OpenAIEmbedder:
    """Calls `client.embeddings.create` in batches of at most `batch_size` texts."""

    def __init__(self, client: openai.AsyncOpenAI, model: str = DEFAULT_MODEL, batch_size: int = 256) -> None:
        self._client = client
        self._model = model
        self._batch_size = max(1, min(batch_size, MAX_BATCH))

    @property
    def model_id(self) -> str:
        return f"openai:{self._model}:{DIMENSION}"

    @property
    def dimension(self) -> int:
        return DIMENSION

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        vectors: list[Vector] = []
        for start in range(0, len(texts), self._batch_size):
            vectors.extend(await self._embed_batch(list(texts[start : start + self._batch_size])))
        return vectors

    async def _embed_batch(self, batch: list[str]) -> list[Vector]:
        try:
            response = await self._client.embeddings.create(
                model=self._model, input=batch, dimensions=DIMENSION, encoding_format="float"
            )
        except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as error:
            raise EmbeddingUnavailable(f"embeddings provider unavailable: {type(error).__name__}") from error
        except openai.APIStatusError as error:
            raise EmbeddingUnavailable(
                f"embeddings provider refused the request (HTTP {error.status_code})"
            ) from error
        data = sorted(response.data, key=lambda item: item.index)
        if len(data) != len(batch):
            raise EmbeddingUnavailable(
                f"embeddings provider returned {len(data)} vectors for {len(batch)} texts"
            )
        vectors: list[Vector] = []
        for item in data:
            if len(item.embedding) != DIMENSION:
                raise EmbeddingUnavailable(
                    f"embeddings provider returned {len(item.embedding)} dimensions, expected {DIMENSION}"
                )
            vectors.append(_normalise(item.embedding))
        return vectors
