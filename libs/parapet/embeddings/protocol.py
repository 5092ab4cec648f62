"""The embedder contract every implementation follows."""

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

#: Dimension of every Parapet embedding (all-MiniLM-L6-v2; OpenAI models are asked for this size).
DIMENSION = 384

#: One embedding: `DIMENSION` floats, L2-normalised (so cosine similarity = dot product).
Vector = list[float]


class EmbeddingUnavailable(Exception):
    """The embedding backend cannot answer now (provider down, model missing); the caller may retry."""


class EmbeddingRejected(Exception):
    """The backend refuses some texts themselves (longer than its model reads, input it finds invalid): the same
    texts are refused on every retry, so the caller must not retry them. `refused` maps each refused text to the
    backend's reason."""

    def __init__(self, refused: Mapping[str, str]) -> None:
        super().__init__(f"the embeddings backend refused {len(refused)} of the texts")
        self.refused = dict(refused)


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit vectors of `dimension` floats, one per text, in input order."""

    @property
    def model_id(self) -> str:
        """Identifies the model; vectors of different model ids must never be compared."""
        ...

    @property
    def dimension(self) -> int:
        """Length of every vector returned."""
        ...

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        """Embeds `texts` (any number; implementations batch). Raises `EmbeddingUnavailable` (retry later) or
        `EmbeddingRejected` (texts the backend will never embed)."""
        ...


async def embed_own(embedder: Embedder, texts: Sequence[str]) -> list[Vector]:
    """``embedder.embed(texts)``, where an ``EmbeddingRejected`` always names some of ``texts``.

    A cache that shares one computation between callers asking for the same text (``CachedEmbedder``) hands
    every waiter that computation's failure, so a refusal may name only another caller's texts: it says nothing
    about ours. Such a call is made once more (the shared computation is over by then); refused that way again,
    it is given up as unavailable, never reported as our texts' refusal."""
    own = set(texts)
    for attempt in range(2):
        try:
            return await embedder.embed(list(texts))
        except EmbeddingRejected as error:
            if own & error.refused.keys():
                raise EmbeddingRejected({t: r for t, r in error.refused.items() if t in own}) from error
            if attempt:
                raise EmbeddingUnavailable(
                    f"a shared embedding call was refused for other texts: {error}"
                ) from error
    raise AssertionError("unreachable")
