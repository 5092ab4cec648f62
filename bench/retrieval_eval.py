"""Retrieval quality (not answer quality): recall@5, MRR@10 and nDCG@10 for vector, full-text and hybrid.

The labelled set is built by bench/retrieval_corpus.py from Debian's English package descriptions
(1,500 documents, 250 questions, one relevant document each; see that module for how). Everything goes
through the real retrieval service over gRPC: ingestion (all-MiniLM-L6-v2 embeddings, pgvector HNSW),
then Query in each mode with top_k = 20 chunks, reduced to distinct documents in rank order.
"""

from __future__ import annotations

import hashlib
import math
import os
import time

from bench.report import table, write_section
from bench.retrieval_corpus import build_documents, build_questions, translations
from bench.retrieval_support import infrastructure, retrieval_service
from parapet.retrieval.v1 import retrieval_service_pb2 as pb

DOCUMENTS = 1500
QUESTIONS = 250
TENANT = "eval"
MODES = {
    "vector": pb.SEARCH_MODE_VECTOR,
    "full text": pb.SEARCH_MODE_FULL_TEXT,
    "hybrid (RRF)": pb.SEARCH_MODE_HYBRID,
}


def metrics(ranked: list[list[str]], relevant: list[str]) -> tuple[float, float, float]:
    """recall@5, MRR@10, nDCG@10 for one relevant document per question."""
    recall = mrr = ndcg = 0.0
    for documents, target in zip(ranked, relevant, strict=True):
        if target in documents[:5]:
            recall += 1
        if target in documents[:10]:
            rank = documents.index(target) + 1
            mrr += 1 / rank
            ndcg += 1 / math.log2(rank + 1)  # ideal DCG is 1 with a single relevant document
    n = len(relevant)
    return recall / n, mrr / n, ndcg / n


async def main() -> None:
    corpus = build_documents(translations(), DOCUMENTS)
    questions = build_questions(corpus, QUESTIONS)
    fingerprint = hashlib.sha256("".join(d.document_id + d.content for d in corpus).encode()).hexdigest()[:12]
    print(f"{len(corpus)} documents, {len(questions)} questions (corpus sha256 {fingerprint})", flush=True)
    async with (
        infrastructure() as (database_url, nats_url, home),
        retrieval_service(database_url, nats_url, home) as service,
    ):
        started = time.perf_counter()
        results = await service.ingest(TENANT, [(d.document_id, d.title, d.content) for d in corpus])
        seconds = time.perf_counter() - started
        chunks = sum(r.chunk_count for r in results)
        print(f"ingested {chunks} chunks in {seconds:.1f} s", flush=True)
        rows = []
        caller = service.caller(TENANT)
        for name, mode in MODES.items():
            ranked = []
            for question in questions:
                response = await service.stub.Query(
                    pb.QueryRequest(query=question.question, top_k=20, mode=mode), metadata=caller
                )
                order: list[str] = []
                for chunk in response.chunks:
                    if chunk.citation.document_id not in order:
                        order.append(chunk.citation.document_id)
                ranked.append(order)
            recall, mrr, ndcg = metrics(ranked, [q.document_id for q in questions])
            rows.append([name, f"{recall:.3f}", f"{mrr:.3f}", f"{ndcg:.3f}"])
            print(name, rows[-1], flush=True)
    sample = "\n".join(f"- `{q.question}` → `{q.document_id}`" for q in questions[:5])
    body = f"""
Retrieval quality on a labelled set built by `bench/retrieval_corpus.py` from Debian 12's English package
descriptions (`Translation-en` of bookworm/main, after `apt-get update -o Acquire::Languages=en`):
{len(corpus)} documents (one package each; ~560 characters on average), {len(questions)} questions with one
relevant document each (corpus fingerprint `{fingerprint}`). Questions are made from one sentence of the
extended description holding at least two words no other document has, with the package name masked, the
subject stripped and a quarter of the other words dropped: lexical cues remain, so full-text search is
favoured; they are synthetic, not user questions. Ingestion ({chunks} chunks) took {seconds:.1f} s
({chunks / seconds:.0f} chunks/s through the service, batches of 50 documents; load average
{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end of the run). Each Query asks for 20 chunks,
reduced to distinct documents.

{table(["mode", "recall@5", "MRR@10", "nDCG@10"], rows)}

Examples:
{sample}
"""
    write_section(
        "retrieval_eval",
        "Retrieval quality (vector, full text, hybrid)",
        "python -m bench retrieval_eval",
        body,
    )
