"""Sentence-transformers pooling: mean over real tokens, then L2 normalisation."""

import numpy as np
import numpy.typing as npt


def mean_pool_normalise(
    hidden: npt.NDArray[np.float32], attention_mask: npt.NDArray[np.int64]
) -> npt.NDArray[np.float32]:
    """(batch, seq, dim) token states + (batch, seq) mask -> (batch, dim) unit vectors."""
    mask = attention_mask[:, :, None].astype(np.float32)
    summed = (hidden * mask).sum(axis=1)
    # A text always has [CLS] and [SEP], so the count is never 0; the floor guards degenerate input.
    counts = np.clip(mask.sum(axis=1), 1e-9, None)
    pooled = summed / counts
    norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    result: npt.NDArray[np.float32] = (pooled / norms).astype(np.float32)
    return result
