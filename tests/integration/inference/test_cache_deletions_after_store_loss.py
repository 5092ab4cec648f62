"""The semantic cache's documents-deleted consumer after NATS lost its store (an emptyDir, a wiped volume): the
stream and the durable consumer are gone. Before, the consumer's subscription stayed bound to the lost durable
and every fetch failed: deletions never reached the cache, which served answers grounded in deleted documents
until their TTL."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import grpc.aio

from parapet.embedded import EmbeddedNats
from parapet.inference.v1 import cache_pb2, completion_pb2
from parapet.kit.testing import TestKeys, running
from parapet.retrieval.v1 import retrieval_service_pb2 as retrieval_pb
from parapet.retrieval.v1 import retrieval_service_pb2_grpc
from parapet.upstream import UpstreamServer
from services.retrieval.app import APP as RETRIEVAL
from tests.integration.inference.conftest import Inference, StartInference, principal, upstream_config
from tests.integration.retrieval.conftest import Client, doc, retrieval_settings

MODELS = [
    {"name": "gpt", "provider": "openai", "upstream_model": "gpt-4o-mini", "input_price_per_million": "1"}
]
QUESTION = "How do I reset my password?"


def grounded_in(document_id: str) -> list[completion_pb2.ContextChunk]:
    return [completion_pb2.ContextChunk(document_id=document_id, title="Account help", text="Use the link.")]


async def until_outcome(
    inference: Inference, tenant: str, document_id: str, wanted: Any, within: float
) -> Any:
    """The cache outcome of the question grounded in ``document_id`` once it is ``wanted``, or the last one seen
    after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        answer = await inference.stream(QUESTION, who=principal(tenant), context=grounded_in(document_id))
        outcome = answer.summary.cache.outcome
        if outcome == wanted or time.monotonic() > deadline:
            return outcome
        await asyncio.sleep(0.2)


async def test_a_document_deleted_after_nats_lost_its_store_still_evicts_its_cached_answer(
    start_inference: StartInference,
    upstream: UpstreamServer,
    fresh_nats: EmbeddedNats,
    tmp_path: Path,
    keys: TestKeys,
    database_url: str,
) -> None:
    tenant = f"lost-{uuid.uuid4().hex[:8]}"
    hit, miss = cache_pb2.CACHE_OUTCOME_EXACT_HIT, cache_pb2.CACHE_OUTCOME_MISS
    async with (
        running(RETRIEVAL, retrieval_settings(tmp_path, keys, database_url, fresh_nats.url)) as (
            _server,
            port,
        ),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        start_inference(
            upstream_config(upstream, MODELS),
            cache_enabled=True,
            nats_url=fresh_nats.url,
            nats_reconnect_wait_seconds=0.2,
        ) as inference,
    ):
        retrieval = Client(retrieval_service_pb2_grpc.RetrievalServiceStub(channel), keys)
        caller = retrieval.as_(tenant)
        await retrieval.ingest(caller, (doc("before"), b"Reset it with the link."), (doc("after"), b"Same."))
        for document_id in ("before", "after"):
            await inference.stream(QUESTION, who=principal(tenant), context=grounded_in(document_id))
            assert await until_outcome(inference, tenant, document_id, hit, 10) == hit
        # The consumer works (its durable exists) before NATS loses its store.
        await retrieval.stub.DeleteDocument(
            retrieval_pb.DeleteDocumentRequest(document_id="before"), metadata=caller
        )
        assert await until_outcome(inference, tenant, "before", miss, 30) == miss

        await asyncio.to_thread(fresh_nats.stop)
        await asyncio.to_thread(shutil.rmtree, fresh_nats.store_dir)
        await asyncio.to_thread(fresh_nats.start)
        assert await until_outcome(inference, tenant, "after", hit, 10) == hit  # still cached meanwhile
        await retrieval.stub.DeleteDocument(
            retrieval_pb.DeleteDocumentRequest(document_id="after"), metadata=caller
        )
        assert await until_outcome(inference, tenant, "after", miss, 60) == miss
