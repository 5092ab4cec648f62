"""The embedder contract every implementation follows."""

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

#: Dimension of every Parapet embedding (all-MiniLM-L6-v2; OpenAI models are asked for this size).
DIMENSION = 384

#: One embedding: `DIMENSION` floats, L2-normalised (so cosine similarity = dot product).
Vector = list[float]


class EmbeddingUnavailable(Exception):
    """The embedding backend cannot answer now (provider down, model missing); the caller may retry."""


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
        """Embeds `texts` (any number; implementations batch). Raises `EmbeddingUnavailable`."""
        ...
