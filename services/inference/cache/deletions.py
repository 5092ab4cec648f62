"""Consumes ``DocumentsDeletedEvent`` (docs/contracts.md) and drops cached answers grounded in those documents.

It also leaves a tombstone of each deleted document (``SemanticCache.forget_documents``): an answer generated
from the document while the event was handled is written afterwards, and would otherwise be served for its TTL.

A durable JetStream pull consumer with explicit acks: an event is acked only after its deletion committed, so a
database outage delays it and loses nothing; handling one twice is harmless (the rows are already gone); a
message that is no event, or whose tenant differs from its subject's, is logged and acknowledged. Both
retrieval and inference declare the stream; after a failed fetch the consumer subscribes again, declaring the
stream and its durable when NATS lost them (``parapet.kit.durable``).
"""

from __future__ import annotations

import asyncio
import logging

from google.protobuf.message import DecodeError
from nats.js.api import ConsumerConfig

from parapet.events import documents as documents_events
from parapet.kit.bus import Bus
from parapet.kit.durable import DurableConsumer
from parapet.retrieval.v1 import documents_deleted_event_pb2
from services.inference.cache.store import SemanticCache

log = logging.getLogger(__name__)

DURABLE = "inference-semantic-cache"


async def handle(cache: SemanticCache, subject: str, payload: bytes) -> int:
    """Apply one event; returns the entries dropped. Raises when the database fails (the event is redelivered).

    A payload that is no event is dropped with an error logged: redelivering it would never make it one."""
    try:
        event = documents_deleted_event_pb2.DocumentsDeletedEvent.FromString(payload)
    except DecodeError:
        log.error("a documents-deleted message that is no event; dropped", extra={"subject": subject})
        return 0
    tenant = subject.rsplit(".", 1)[-1]
    if event.tenant_id != tenant:
        log.error(
            "documents-deleted event for another tenant than its subject; ignored",
            extra={"event_id": event.event_id, "subject": subject},
        )
        return 0
    if event.reason == documents_deleted_event_pb2.DELETION_REASON_TENANT_ERASURE:
        return await cache.erase_tenant(tenant)
    if not event.document_ids:
        return 0
    return await cache.forget_documents(tenant, list(event.document_ids))


async def consume_deletions(bus: Bus, cache: SemanticCache, *, poll_seconds: float = 1.0) -> None:
    """Run until cancelled."""
    consumer = DurableConsumer(
        bus,
        documents_events.DOCUMENTS_STREAM,
        documents_events.SUBJECTS,
        ConsumerConfig(durable_name=DURABLE),  # otherwise JetStream's defaults, as ever (explicit acks)
    )
    while True:
        try:
            messages = await consumer.fetch(64, poll_seconds)
        except Exception:
            # Subscribed again at the next fetch: the durable, or the stream, may be gone with a NATS that lost
            # its store, and a subscription bound to it would fail for ever (deletions never reaching the cache).
            log.warning("documents-deleted events not fetched; subscribing again", exc_info=True)
            await asyncio.sleep(poll_seconds)
            continue
        for message in messages:
            try:
                dropped = await handle(cache, message.subject, message.data)
            except Exception:
                log.warning("documents-deleted event not applied; it will be redelivered", exc_info=True)
                await message.nak(delay=poll_seconds)
                continue
            await message.ack()
            log.info("cache entries dropped for deleted documents", extra={"dropped": dropped})
