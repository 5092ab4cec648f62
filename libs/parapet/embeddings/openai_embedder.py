"""Embeddings from the OpenAI API (or any server speaking its /v1/embeddings), via the official SDK.

The model is asked for `DIMENSION` dimensions (text-embedding-3-* support shortening), so its vectors
fit the same stores as the local model's; they are re-normalised because shortened vectors need not
be unit length. A different model id keeps them apart from MiniLM vectors.

Errors: throttling, server errors, timeouts and lost connections are `EmbeddingUnavailable` (retry later). A
request refused as invalid (400, 404, 422) is either some text's fault (an input over the model's token limit)
or the deployment's (a model that does not exist or cannot shorten its vectors): a one-word probe tells them
apart. If the probe is refused too, every text would be, so it is `EmbeddingUnavailable` for an operator to fix;
otherwise the batch is bisected down to the texts refused on their own, and `EmbeddingRejected` names them:
retrying them can never succeed. (Until 2026-12-06 every refusal was `EmbeddingUnavailable`, and a document
with a text over the limit was retried forever.)
"""

import math
from collections.abc import Sequence

import openai

from parapet.embeddings.protocol import DIMENSION, EmbeddingRejected, EmbeddingUnavailable, Vector

DEFAULT_MODEL = "text-embedding-3-small"
#: The API accepts at most 2048 inputs per request.
MAX_BATCH = 2048
#: What the API answers for a request it finds invalid: the request's fault, whatever a retry does.
_REFUSALS = (openai.BadRequestError, openai.NotFoundError, openai.UnprocessableEntityError)
#: A text every working configuration embeds: refused too, the configuration is at fault, not the texts.
PROBE_TEXT = "probe"
#: The provider's reason is kept to this many characters (it goes into each refused document's status).
_MAX_REASON_CHARS = 300

#: A text's vector, or the provider's reason for refusing the text.
_Outcome = Vector | str


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
        outcomes: list[_Outcome] = []
        for start in range(0, len(texts), self._batch_size):
            outcomes.extend(await self._embed_batch(list(texts[start : start + self._batch_size])))
        refused = {text: o for text, o in zip(texts, outcomes, strict=True) if isinstance(o, str)}
        if refused:
            raise EmbeddingRejected(refused)
        return [o for o in outcomes if not isinstance(o, str)]

    async def _embed_batch(self, batch: list[str]) -> list[_Outcome]:
        try:
            return list(await self._request(batch))
        except _REFUSALS as error:
            await self._check_configuration()
            return await self._isolate(batch, error)

    async def _check_configuration(self) -> None:
        """Raises `EmbeddingUnavailable` if the provider refuses even `PROBE_TEXT`: then it refuses every text."""
        try:
            await self._request([PROBE_TEXT])
        except _REFUSALS as error:
            raise EmbeddingUnavailable(
                f"embeddings provider refuses every request ({_reason(error)}): check the model and base URL"
            ) from error

    async def _isolate(self, batch: list[str], error: openai.APIStatusError) -> list[_Outcome]:
        """The outcome of each text of a refused `batch`: halves are tried again until the refused texts are
        alone, so a few bad texts in a large batch cost a few requests per bad text, not one per text."""
        if len(batch) == 1:
            return [_reason(error)]
        middle = len(batch) // 2
        return [*await self._attempt(batch[:middle]), *await self._attempt(batch[middle:])]

    async def _attempt(self, batch: list[str]) -> list[_Outcome]:
        try:
            return list(await self._request(batch))
        except _REFUSALS as error:
            return await self._isolate(batch, error)

    async def _request(self, batch: list[str]) -> list[Vector]:
        """One `embeddings.create` call; refusals (`_REFUSALS`) are left to the caller."""
        try:
            response = await self._client.embeddings.create(
                model=self._model, input=batch, dimensions=DIMENSION, encoding_format="float"
            )
        except _REFUSALS:
            raise
        except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as error:
            raise EmbeddingUnavailable(f"embeddings provider unavailable: {type(error).__name__}") from error
        except openai.APIStatusError as error:
            # 401, 403, 409, ...: the deployment's credentials or account, not the texts; retry once fixed.
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


def _reason(error: openai.APIStatusError) -> str:
    """The provider's own words for a refusal (its error body's message), with the HTTP status."""
    body = error.body
    message = body.get("message") if isinstance(body, dict) else None
    return f"HTTP {error.status_code}: {message or error.message}"[:_MAX_REASON_CHARS]
