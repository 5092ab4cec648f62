"""DocumentsDeletedEvents reach NATS however NATS fails: down at the moment of the deletion, or back without its
store (the stream gone)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import grpc.aio
import nats
import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from parapet.embedded import EmbeddedNats
from parapet.events.documents import SUBJECT_PREFIX
from parapet.kit.testing import TestKeys, running
from parapet.retrieval.v1 import documents_deleted_event_pb2 as events_pb2
from parapet.retrieval.v1 import retrieval_service_pb2 as pb
from parapet.retrieval.v1 import retrieval_service_pb2_grpc
from services.retrieval.app import APP
from tests.integration.retrieval.conftest import Client, doc, new_tenant, retrieval_settings


async def test_deletions_while_nats_is_down_or_lost_its_store_are_all_announced(
    tmp_path: Path, keys: TestKeys, database_url: str, fresh_nats: EmbeddedNats
) -> None:
    """A NATS whose JetStream store is lost on restart (an emptyDir, a wiped volume) comes back without the
    RETRIEVAL_DOCUMENTS stream. Before, the relay's publishes found no stream and every event waited in the
    outbox until retrieval restarted: the semantic cache kept serving answers grounded in deleted documents."""
    tenant = new_tenant()
    settings = retrieval_settings(tmp_path, keys, database_url, fresh_nats.url)
    async with (
        running(APP, settings) as (_server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        client = Client(retrieval_service_pb2_grpc.RetrievalServiceStub(channel), keys)
        caller = client.as_(tenant, "dora")
        await client.ingest(caller, *[(doc(f"d{i}"), f"Document number {i}.".encode()) for i in range(3)])

        await asyncio.to_thread(fresh_nats.stop)
        # Down at the moment of the deletion: committed all the same, announced once NATS is back.
        await client.stub.DeleteDocument(pb.DeleteDocumentRequest(document_id="d0"), metadata=caller)
        await asyncio.to_thread(shutil.rmtree, fresh_nats.store_dir)
        await asyncio.to_thread(fresh_nats.start)
        await client.stub.DeleteDocument(pb.DeleteDocumentRequest(document_id="d1"), metadata=caller)

        connection = await nats.connect(fresh_nats.url)
        try:
            assert await _announced(connection.jetstream(), tenant, {"d0", "d1"}) == {"d0", "d1"}
        finally:
            await connection.close()


async def _announced(
    jetstream: JetStreamContext, tenant: str, expected: set[str], within: float = 30.0
) -> set[str]:
    """The document ids the tenant's stored DocumentsDeletedEvents name, once they include ``expected`` or when
    ``within`` seconds have passed (the stream may not exist until the relay declares it)."""
    deadline = asyncio.get_running_loop().time() + within
    announced: set[str] = set()
    while not expected <= announced and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)
        announced = set()
        try:
            subscription = await jetstream.subscribe(SUBJECT_PREFIX + tenant, ordered_consumer=True)
        except NotFoundError:
            continue  # no stream yet
        try:
            while True:
                message = await subscription.next_msg(timeout=1)
                announced.update(events_pb2.DocumentsDeletedEvent.FromString(message.data).document_ids)
        except nats.errors.TimeoutError:
            pass
        finally:
            await subscription.unsubscribe()
    return announced
