"""Text embeddings shared by the retrieval service and the semantic cache.

One protocol, `Embedder`, with a local all-MiniLM-L6-v2 implementation (onnxruntime, model shipped in a
PyPI package, no download at run time), an OpenAI-compatible one, and a cache so identical text is
embedded once.
"""

from parapet.embeddings.cache import CachedEmbedder
from parapet.embeddings.protocol import (
    DIMENSION,
    Embedder,
    EmbeddingRejected,
    EmbeddingUnavailable,
    Vector,
    embed_own,
)

__all__ = [
    "DIMENSION",
    "CachedEmbedder",
    "Embedder",
    "EmbeddingRejected",
    "EmbeddingUnavailable",
    "Vector",
    "embed_own",
]
