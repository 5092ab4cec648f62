"""The local all-MiniLM-L6-v2 embedder against fp32 reference vectors, and its batching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from parapet.embeddings import DIMENSION, Embedder
from parapet.embeddings.minilm import MAX_TOKENS, MiniLmEmbedder

REFERENCE = json.loads(Path(__file__).with_name("reference_vectors.json").read_text())


async def test_matches_fp32_reference_vectors(minilm: MiniLmEmbedder) -> None:
    vectors = np.array(await minilm.embed(REFERENCE["sentences"]))
    reference = np.array(REFERENCE["vectors"])
    cosines = (vectors * reference).sum(axis=1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() >= 0.999, cosines


async def test_vectors_are_unit_length_and_384_wide(minilm: MiniLmEmbedder) -> None:
    assert isinstance(minilm, Embedder)
    assert minilm.dimension == DIMENSION == 384
    vectors = await minilm.embed(["one", "two words", "a somewhat longer sentence about vectors"])
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert np.allclose(np.linalg.norm(np.array(vectors), axis=1), 1.0, atol=1e-5)


async def test_result_does_not_depend_on_batch_or_order(minilm: MiniLmEmbedder) -> None:
    texts = [
        "short",
        "a much longer text that pads the shorter ones in its batch " * 5,
        "medium length text here",
    ]
    together = np.array(await minilm.embed(texts))
    alone = np.array([(await minilm.embed([t]))[0] for t in texts])
    assert np.allclose(together, alone, atol=1e-5)
    reversed_ = np.array(await minilm.embed(list(reversed(texts))))[::-1]
    assert np.allclose(together, reversed_, atol=1e-5)


async def test_similar_meanings_are_closer(minilm: MiniLmEmbedder) -> None:
    cat, feline, revenue = np.array(
        await minilm.embed(
            ["A cat sits on the mat.", "A feline rests on a rug.", "Revenue grew 12% this quarter."]
        )
    )
    assert cat @ feline > cat @ revenue + 0.3


async def test_long_text_is_truncated_not_rejected(minilm: MiniLmEmbedder) -> None:
    long_text = "word " * (MAX_TOKENS * 4)
    assert len(minilm.tokenizer.encode(long_text).ids) == MAX_TOKENS
    (vector,) = await minilm.embed([long_text])
    assert len(vector) == DIMENSION


async def test_empty_input_gives_empty_output(minilm: MiniLmEmbedder) -> None:
    assert await minilm.embed([]) == []
