"""One local MiniLM model for the embeddings tests (loading it takes about a second)."""

from __future__ import annotations

import pytest

from parapet.embeddings.minilm import MiniLmEmbedder


@pytest.fixture(scope="session")
def minilm() -> MiniLmEmbedder:
    return MiniLmEmbedder()
