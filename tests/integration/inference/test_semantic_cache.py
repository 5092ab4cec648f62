"""The semantic cache on PostgreSQL + pgvector with the real MiniLM embedder: exact and paraphrase hits,
isolation across tenants, access scopes and request partitions, TTL, the documents-deleted event, and
DeleteCacheEntries (a user's erasure, or the whole tenant's)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import grpc
import grpc.aio
import nats
import pytest
from sqlalchemy import text

from parapet.events import documents as documents_events
from parapet.inference.v1 import cache_pb2, completion_pb2, generation_pb2, inference_service_pb2, routing_pb2
from parapet.kit.bus import Bus
from parapet.kit.database import Database
from parapet.kit.errors import error_details
from parapet.kit.identity import Principal
from parapet.retrieval.v1 import documents_deleted_event_pb2
from parapet.upstream import UpstreamServer
from services.inference.cache.deletions import DURABLE
from tests.integration.inference.conftest import (
    StartInference,
    principal,
    settle_writes,
    until_cached,
    upstream_config,
)

MODELS = [
    {"name": "gpt", "provider": "openai", "upstream_model": "gpt-4o-mini", "input_price_per_million": "1"}
]
QUESTION = "How do I reset my password?"
PARAPHRASE = "What is the way to reset my password?"
CONTEXT = [completion_pb2.ContextChunk(document_id="doc-7", title="Account help", text="Use the reset link.")]


async def test_exact_and_paraphrase_hits_stream_back_at_zero_cost(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    who = principal(f"cache-{uuid.uuid4().hex[:8]}", groups=("support",))
    async with start_inference(upstream_config(upstream, MODELS), cache_enabled=True) as inference:
        first = await inference.stream(QUESTION, who=who, context=CONTEXT)
        assert first.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS
        assert first.summary.cost.amount_micros > 0
        exact = await until_cached(inference, QUESTION, who, context=CONTEXT)
        assert exact.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT
        assert exact.text == first.text and exact.deltas  # streamed back as deltas, then the summary
        assert exact.summary.cost.amount_micros == 0 and exact.summary.usage.prompt_tokens == 0
        assert exact.summary.routing.reason == routing_pb2.ROUTING_REASON_CACHE
        assert exact.summary.routing.model == "gpt"
        assert exact.summary.finish_reason == generation_pb2.FINISH_REASON_STOP
        # Case and spacing do not make another question.
        shouty = await inference.stream("  how do I RESET my   password? ", who=who, context=CONTEXT)
        assert shouty.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT
        paraphrase = await inference.stream(PARAPHRASE, who=who, context=CONTEXT)
        assert paraphrase.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_SEMANTIC_HIT
        assert paraphrase.summary.cache.similarity >= 0.95
        assert paraphrase.text == first.text
        assert len(upstream.requests) == 1, "hits never reach the provider"
        # A related but different question is below the threshold.
        other = await inference.stream("How can I change my password?", who=who, context=CONTEXT)
        assert other.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS


async def test_answers_never_cross_tenants_access_scopes_or_request_partitions(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    tenant = f"iso-{uuid.uuid4().hex[:8]}"
    owner = principal(tenant, "alice", groups=("finance", "staff"))
    async with start_inference(upstream_config(upstream, MODELS), cache_enabled=True) as inference:
        await inference.stream(QUESTION, who=owner)
        assert (await until_cached(inference, QUESTION, owner)).summary.cache.outcome == (
            cache_pb2.CACHE_OUTCOME_EXACT_HIT
        )
        # Same groups in another order, another user: the same access scope, so a hit.
        peer = principal(tenant, "bob", groups=("staff", "finance"))
        assert (
            await inference.stream(QUESTION, who=peer)
        ).summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT
        # Each miss stores an answer of its own, so every probe below uses a key nothing else has used.
        for n, question in enumerate((QUESTION, PARAPHRASE)):
            misses: list[tuple[str, Principal, dict[str, Any]]] = [
                (
                    "another tenant",
                    principal(f"other-{uuid.uuid4().hex[:8]}", "alice", groups=("finance", "staff")),
                    {},
                ),
                ("fewer groups", principal(tenant, "carol", groups=(("staff",), ("finance",))[n]), {}),
                (
                    "more groups",
                    principal(tenant, "dave", groups=("finance", "staff", ("hr", "legal")[n])),
                    {},
                ),
                (
                    "other parameters",
                    owner,
                    {"generation": generation_pb2.GenerationConfig(temperature=0.2 + n)},
                ),
                ("write only", owner, {"cache_mode": cache_pb2.CACHE_MODE_WRITE_ONLY}),
            ]
            for label, who, fields in misses:
                outcome = await inference.stream(question, who=who, **fields)
                assert outcome.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS, (label, question)
        disabled = await inference.stream(QUESTION, who=owner, cache_mode=cache_pb2.CACHE_MODE_DISABLED)
        assert disabled.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_BYPASSED


async def test_entries_expire_after_their_ttl(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    who = principal(f"ttl-{uuid.uuid4().hex[:8]}")
    async with start_inference(
        upstream_config(upstream, MODELS), cache_enabled=True, cache_ttl_seconds=1
    ) as inference:
        await inference.stream(QUESTION, who=who)
        assert (await until_cached(inference, QUESTION, who)).summary.cache.outcome == (
            cache_pb2.CACHE_OUTCOME_EXACT_HIT
        )
        await asyncio.sleep(1.2)
        assert (
            await inference.stream(QUESTION, who=who)
        ).summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS


async def _entries(database_url: str, *tenants: str) -> int:
    """How many cache rows ``tenants`` have, read past row-level security (as the tables' owner, a superuser)."""
    database = Database(database_url, "inference", pool_size=1, max_overflow=0)
    try:
        async with database.transaction() as session:
            found = await session.execute(
                text("SELECT count(*) FROM cache_entries WHERE tenant_id = ANY(:t)"), {"t": list(tenants)}
            )
            return int(found.scalar_one())
    finally:
        await database.close()


async def test_expired_answers_of_every_tenant_are_deleted_without_their_tenant_writing_again(
    start_inference: StartInference, upstream: UpstreamServer, database_url: str
) -> None:
    """Before the sweep, expired entries went only with their tenant's next write: a tenant that stopped
    asking kept its questions and answers for ever."""
    run = uuid.uuid4().hex[:8]
    idle = [f"idle-{run}-{i}" for i in range(2)]
    async with start_inference(upstream_config(upstream, MODELS), cache_enabled=True) as inference:
        live = principal(f"live-{run}")
        await inference.stream(QUESTION, who=live)
        await until_cached(inference, QUESTION, live)
    async with start_inference(
        upstream_config(upstream, MODELS),
        cache_enabled=True,
        cache_ttl_seconds=0.5,
        cache_expiry_sweep_seconds=0.2,
    ) as inference:
        for tenant in idle:
            await inference.stream(QUESTION, who=principal(tenant))
        deadline = time.monotonic() + 5
        while await _entries(database_url, *idle) < 2:  # stored after each summary went out
            assert time.monotonic() < deadline, "the answers were not cached"
            await asyncio.sleep(0.05)
        deadline = time.monotonic() + 10
        while await _entries(database_url, *idle) > 0:
            assert time.monotonic() < deadline, "expired entries of idle tenants were never deleted"
            await asyncio.sleep(0.1)
    # The sweep's scope deletes expired rows only: even a DELETE without any condition leaves a live entry.
    # (Under a role that is neither owner nor superuser, both of which PostgreSQL exempts from the policies.)
    database = Database(database_url, "inference", pool_size=1, max_overflow=0)
    try:
        async with database.transaction() as session:
            await session.execute(
                text(
                    "DO $$ BEGIN CREATE ROLE parapet_cache_sweep_test NOLOGIN;"
                    " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
                )
            )
            await session.execute(text("GRANT USAGE ON SCHEMA inference TO parapet_cache_sweep_test"))
            await session.execute(text("GRANT SELECT, DELETE ON cache_entries TO parapet_cache_sweep_test"))
            await session.execute(text("SET LOCAL ROLE parapet_cache_sweep_test"))
            await session.execute(text("SELECT set_config('parapet.scope', 'cache-expiry', true)"))
            await session.execute(text("DELETE FROM cache_entries"))
    finally:
        await database.close()
    assert await _entries(database_url, live.tenant_id) == 1


async def _publish_raw(nats_url: str, tenant: str, payload: bytes) -> None:
    client = await nats.connect(nats_url)
    try:
        await client.jetstream().publish(documents_events.subject(tenant), payload)
    finally:
        await client.close()


async def _publish_deletion(
    nats_url: str,
    tenant: str,
    document_ids: list[str],
    *,
    reason: int = documents_deleted_event_pb2.DELETION_REASON_DOCUMENT_DELETED,
    claimed_tenant: str | None = None,
) -> None:
    """Publish as the retrieval service does (docs/contracts.md), declaring its stream if it is not there yet.

    ``claimed_tenant`` puts another tenant in the event than the subject names (a forged or broken event)."""
    subject = documents_events.subject(tenant)
    bus = await Bus.connect(nats_url, name="test-retrieval")
    try:
        await bus.ensure_stream(documents_events.DOCUMENTS_STREAM)
    finally:
        await bus.close()
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        event_id = str(uuid.uuid4())
        event = documents_deleted_event_pb2.DocumentsDeletedEvent(
            event_id=event_id,
            tenant_id=tenant if claimed_tenant is None else claimed_tenant,
            document_ids=document_ids,
            reason=reason,  # type: ignore[arg-type]
        )
        await js.publish(
            subject,
            event.SerializeToString(),
            headers={"Nats-Msg-Id": event_id, "ce-type": documents_events.CE_TYPE},
        )
    finally:
        await client.close()


async def test_a_documents_deleted_event_drops_answers_grounded_in_them(
    start_inference: StartInference, upstream: UpstreamServer, nats_url: str
) -> None:
    tenant = f"del-{uuid.uuid4().hex[:8]}"
    who = principal(tenant)
    unrelated_question = "Which plans do you offer?"
    unrelated_context = [completion_pb2.ContextChunk(document_id="doc-8", title="Plans", text="Two plans.")]
    async with start_inference(upstream_config(upstream, MODELS), cache_enabled=True) as inference:
        for question, context in ((QUESTION, CONTEXT), (unrelated_question, unrelated_context)):
            await inference.stream(question, who=who, context=context)
            hit = await until_cached(inference, question, who, context=context)
            assert hit.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT
        # Another tenant's deletion of a document with the same id changes nothing here.
        await _publish_deletion(nats_url, f"x-{tenant}", ["doc-7"])
        await _publish_deletion(nats_url, tenant, ["doc-7"])
        deadline = time.monotonic() + 10
        while True:
            outcome = await inference.stream(
                QUESTION, who=who, context=CONTEXT, cache_mode=cache_pb2.CACHE_MODE_READ_WRITE
            )
            if outcome.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS:
                break
            assert time.monotonic() < deadline, "the deleted document's answer is still served"
            await asyncio.sleep(0.1)
        kept = await inference.stream(unrelated_question, who=who, context=unrelated_context)
        assert kept.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT


async def test_a_tenant_erasure_drops_every_answer_of_that_tenant_and_a_mismatched_event_nothing(
    start_inference: StartInference, upstream: UpstreamServer, nats_url: str
) -> None:
    run = uuid.uuid4().hex[:8]
    erased, bystander, named = f"erased-{run}", f"bystander-{run}", f"named-{run}"
    plain_question = "Which plans do you offer?"
    async with start_inference(upstream_config(upstream, MODELS), cache_enabled=True) as inference:
        for tenant in (erased, bystander, named):
            for question, context in ((QUESTION, CONTEXT), (plain_question, [])):
                await inference.stream(question, who=principal(tenant), context=context)
                hit = await until_cached(inference, question, principal(tenant), context=context)
                assert hit.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT
        # A body that is no event at all is dropped (left unacknowledged, it would come back for ever).
        await _publish_raw(nats_url, erased, b"\x08\xff not an event")
        # An erasure on one tenant's subject that names another in its body is ignored: neither is touched.
        await _publish_deletion(
            nats_url,
            named,
            [],
            reason=documents_deleted_event_pb2.DELETION_REASON_TENANT_ERASURE,
            claimed_tenant=bystander,
        )
        await _publish_deletion(
            nats_url, erased, [], reason=documents_deleted_event_pb2.DELETION_REASON_TENANT_ERASURE
        )
        # Events of one stream reach the consumer in order: once the erasure shows, the forged one was handled.
        deadline = time.monotonic() + 10
        while True:
            probe = await inference.stream(plain_question, who=principal(erased))
            if probe.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS:
                break
            assert time.monotonic() < deadline, "the erased tenant's answers are still served"
            await asyncio.sleep(0.1)
        grounded = await inference.stream(QUESTION, who=principal(erased), context=CONTEXT)
        assert grounded.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS
        for tenant in (bystander, named):
            for question, context in ((QUESTION, CONTEXT), (plain_question, [])):
                kept = await inference.stream(question, who=principal(tenant), context=context)
                assert kept.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT, (tenant, question)
    client = await nats.connect(nats_url)
    try:
        consumer = await client.jetstream().consumer_info(documents_events.DOCUMENTS_STREAM.name, DURABLE)
    finally:
        await client.close()
    assert consumer.num_ack_pending == 0 and consumer.num_pending == 0, consumer


async def test_deleting_a_users_entries_drops_the_answers_to_their_questions_only(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    """A user's erasure: the entries made from their questions go (they hold the question and the answer as
    text); the same scope's entries made from another user's questions, and another tenant's, stay."""
    tenant = f"user-del-{uuid.uuid4().hex[:8]}"
    alice, bob = principal(tenant, "alice"), principal(tenant, "bob")
    stranger = principal(f"other-{uuid.uuid4().hex[:8]}", "alice")
    plans = "Which plans do you offer?"
    async with start_inference(upstream_config(upstream, MODELS), cache_enabled=True) as inference:
        for who, question in ((alice, QUESTION), (bob, plans), (stranger, QUESTION)):
            await inference.stream(question, who=who)
            hit = await until_cached(inference, question, who)
            assert hit.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT
        # Bob's hit on alice's entry stores nothing of his: the entry stays alice's.
        shared = await inference.stream(QUESTION, who=bob)
        assert shared.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT

        erase = inference_service_pb2.DeleteCacheEntriesRequest(user_id="alice")
        # Another user's entries need admin: bob, a member, is refused and nothing changes.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await inference.stub.DeleteCacheEntries(erase, metadata=inference.metadata(bob), timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_details(refused.value).error_info.metadata["permission"] == "admin"  # type: ignore[union-attr]
        admin = Principal(tenant_id=tenant, subject="ops", roles=("admin",))
        deleted = await inference.stub.DeleteCacheEntries(
            erase, metadata=inference.metadata(admin), timeout=10
        )
        # At least one: a probe of _until_cached that ran before the store committed missed and stored its own.
        assert deleted.deleted_count >= 1
        again = await inference.stub.DeleteCacheEntries(erase, metadata=inference.metadata(admin), timeout=10)
        assert again.deleted_count == 0

        assert (
            await inference.stream(QUESTION, who=bob)
        ).summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS
        kept = await inference.stream(plans, who=alice)
        assert (
            kept.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT
        )  # bob's question, alice's scope
        other = await inference.stream(QUESTION, who=stranger)
        assert other.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT  # another tenant

        # A user may delete their own without admin; a whole tenant's needs it; a request naming no scope is
        # refused.
        own = await inference.stub.DeleteCacheEntries(
            inference_service_pb2.DeleteCacheEntriesRequest(user_id="bob"),
            metadata=inference.metadata(bob),
            timeout=10,
        )
        assert own.deleted_count >= 2  # plans, and the answer to QUESTION he got after alice's went
        assert (
            await inference.stream(plans, who=alice)
        ).summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS
        refunds = "How do refunds work?"
        await inference.stream(refunds, who=alice)
        assert (await until_cached(inference, refunds, alice)).summary.cache.outcome == (
            cache_pb2.CACHE_OUTCOME_EXACT_HIT
        )
        everything = inference_service_pb2.DeleteCacheEntriesRequest(all_entries=True)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await inference.stub.DeleteCacheEntries(
                everything, metadata=inference.metadata(alice), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await inference.stub.DeleteCacheEntries(
                inference_service_pb2.DeleteCacheEntriesRequest(),
                metadata=inference.metadata(admin),
                timeout=10,
            )
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        flushed = await inference.stub.DeleteCacheEntries(
            everything, metadata=inference.metadata(admin), timeout=10
        )
        assert flushed.deleted_count >= 2  # refunds, and plans again (alice's miss just above stored it)
        assert (
            await inference.stream(refunds, who=alice)
        ).summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS
        assert (await inference.stream(QUESTION, who=stranger)).summary.cache.outcome == (
            cache_pb2.CACHE_OUTCOME_EXACT_HIT  # the other tenant's entry outlives this tenant's flush
        )


# Upstream model names of their own, so the outage below touches no other test's models.
OUTAGE_MODELS = [
    {
        "name": "gpt",
        "provider": "openai",
        "upstream_model": "gpt-outage-test",
        "fallbacks": ["claude"],
        "input_price_per_million": "1",
    },
    {"name": "claude", "provider": "anthropic", "upstream_model": "claude-outage-test"},
]
# Cosine ~0.91 to QUESTION with MiniLM: below the normal threshold (0.95), above the fallback one (0.85).
CLOSE_QUESTION = "Can you explain how to reset the password of my account?"


async def test_when_every_provider_fails_a_similar_cached_answer_is_served_as_a_fallback_hit(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    who = principal(f"fallback-{uuid.uuid4().hex[:8]}")
    config = upstream_config(
        upstream,
        OUTAGE_MODELS,
        retry={"max_attempts": 1},
        # A breaker that never opens here: the test ends the outage and expects the providers back at once.
        breaker={
            "window": 100,
            "min_calls": 100,
            "failure_ratio": 1.0,
            "open_seconds": 1,
            "half_open_calls": 1,
        },
    )
    async with start_inference(config, cache_enabled=True) as inference:
        first = await inference.stream(QUESTION, who=who)
        assert first.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS
        await until_cached(inference, QUESTION, who)
        upstream.outages.update({"gpt-outage-test", "claude-outage-test"})
        try:
            served = await inference.stream(CLOSE_QUESTION, who=who)
            assert served.error is None, served.error
            assert served.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_FALLBACK_HIT
            assert 0.85 <= served.summary.cache.similarity < 0.95
            assert served.text == first.text and served.deltas
            assert served.summary.routing.reason == routing_pb2.ROUTING_REASON_CACHE
            assert [a.model for a in served.summary.routing.fallback_attempts] == ["gpt", "claude"]
            assert "every provider failed" in served.summary.routing.detail
            assert served.summary.cost.amount_micros == 0 and served.summary.usage.prompt_tokens == 0
            # Nothing close enough: the caller gets UNAVAILABLE with a retry delay, not a wrong answer.
            unrelated = await inference.stream("How do I reset my username?", who=who)
            assert unrelated.error is not None and unrelated.error.reason == "ALL_PROVIDERS_UNAVAILABLE"
            assert unrelated.error.code == grpc.StatusCode.UNAVAILABLE
            assert unrelated.error.retry_info is not None
            # A request that forbids serving from the cache gets no fallback either; nor does another tenant.
            for who_else, mode in ((who, cache_pb2.CACHE_MODE_WRITE_ONLY), (principal("fallback-other"), 0)):
                refused = await inference.stream(CLOSE_QUESTION, who=who_else, cache_mode=mode)
                assert refused.error is not None and refused.error.reason == "ALL_PROVIDERS_UNAVAILABLE"
        finally:
            upstream.outages.clear()
        # Providers back: the close question is answered by the model again (a miss, not a fallback).
        again = await inference.stream(CLOSE_QUESTION, who=who)
        assert again.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS


async def test_an_answer_is_served_only_to_requests_grounded_in_the_same_context(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    """The partition left the context out: an answer grounded in one document was served to a request grounded
    in another, or in none (retrieval disabled, as for a caller who may not read documents)."""
    who = principal(f"ctx-{uuid.uuid4().hex[:8]}", groups=("staff",))
    question = "Summarise this document in one sentence."
    leave = completion_pb2.ContextChunk(document_id="doc-a", title="Leave", text="25 days of leave a year.")
    notice = completion_pb2.ContextChunk(document_id="doc-c", title="Notice", text="One month of notice.")
    expenses = completion_pb2.ContextChunk(document_id="doc-b", title="Expenses", text="Receipts in 30 days.")
    edited = completion_pb2.ContextChunk(document_id="doc-a", title="Leave", text="30 days of leave a year.")
    async with start_inference(upstream_config(upstream, MODELS), cache_enabled=True) as inference:
        await inference.stream(question, who=who, context=[leave, notice])
        cached = await until_cached(inference, question, who, context=[leave, notice])
        assert cached.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT
        # The same chunks in another order ground the same answer: still a hit.
        reordered = await inference.stream(question, who=who, context=[notice, leave])
        assert reordered.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT
        for label, context in (
            ("another document", [expenses]),
            ("one of the documents only", [leave]),
            ("the document's text changed", [edited, notice]),
            ("no context", []),
        ):
            outcome = await inference.stream(question, who=who, context=context)
            assert outcome.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS, label
        # No context is a partition of its own, where answers without context are found again.
        ungrounded = await until_cached(inference, question, who, context=[])
        assert ungrounded.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT


async def _consumer_caught_up(nats_url: str) -> bool:
    """Whether the cache's deletion consumer has applied and acknowledged every event published so far."""
    client = await nats.connect(nats_url)
    try:
        consumer = await client.jetstream().consumer_info(documents_events.DOCUMENTS_STREAM.name, DURABLE)
    finally:
        await client.close()
    return bool(consumer.num_pending == 0 and consumer.num_ack_pending == 0)


# A slow answer (about 3 s): long enough for a deletion to be handled while it is generated.
SLOW_MODELS = [
    {
        "name": "gpt",
        "provider": "openai",
        "upstream_model": "gpt-slow-answer;chunk_delay=0.1;reply="
        + "+".join(["Use", "the", "reset", "link"] * 8),
    }
]


async def test_an_answer_generated_while_its_document_is_deleted_is_not_stored(
    start_inference: StartInference, upstream: UpstreamServer, nats_url: str, database_url: str
) -> None:
    """The entry was written after the summary, after the documents-deleted event had found nothing to drop, and
    was then served for the whole TTL."""
    tenant = f"late-{uuid.uuid4().hex[:8]}"
    who = principal(tenant)
    async with start_inference(upstream_config(upstream, SLOW_MODELS), cache_enabled=True) as inference:
        answering = asyncio.ensure_future(inference.stream(QUESTION, who=who, context=CONTEXT))
        deadline = time.monotonic() + 5
        while not upstream.requests_for("gpt-slow-answer"):
            assert time.monotonic() < deadline, "the model was never asked"
            await asyncio.sleep(0.01)
        await _publish_deletion(nats_url, tenant, ["doc-7"])
        deadline = time.monotonic() + 10
        while not await _consumer_caught_up(nats_url):
            assert time.monotonic() < deadline, "the deletion was never handled"
            await asyncio.sleep(0.05)
        assert not answering.done(), "the answer must still be generating when the deletion is handled"
        answered = await answering
        assert answered.error is None and answered.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS
        assert answered.summary.finish_reason == generation_pb2.FINISH_REASON_STOP
        await settle_writes(inference, tenant)
        assert await _entries(database_url, tenant) == 0
        probe = await inference.stream(QUESTION, who=who, context=CONTEXT)
        assert probe.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS


async def test_an_entry_stored_as_its_document_was_deleted_is_never_served(
    start_inference: StartInference, upstream: UpstreamServer, database_url: str
) -> None:
    """A store and the deletion's transaction can commit without seeing each other; the entry then exists but a
    lookup checks the tombstone again."""
    tenant = f"race-{uuid.uuid4().hex[:8]}"
    who = principal(tenant)
    async with start_inference(upstream_config(upstream, MODELS), cache_enabled=True) as inference:
        await inference.stream(QUESTION, who=who, context=CONTEXT)
        cached = await until_cached(inference, QUESTION, who, context=CONTEXT)
        assert cached.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT
        # The deletion's tombstone, as if its entry deletion had run just before the entry was inserted.
        database = Database(database_url, "inference", pool_size=1, max_overflow=0)
        try:
            async with database.transaction() as session:
                await session.execute(
                    text(
                        "INSERT INTO document_tombstones (tenant_id, document_id, delete_time, expire_time)"
                        " VALUES (:t, 'doc-7', now(), now() + interval '1 hour')"
                    ),
                    {"t": tenant},
                )
        finally:
            await database.close()
        assert await _entries(database_url, tenant) >= 1
        for question in (QUESTION, PARAPHRASE):  # neither the exact nor the semantic path serves it
            outcome = await inference.stream(question, who=who, context=CONTEXT)
            assert outcome.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS, question


async def test_an_answer_is_served_only_under_the_same_template_variables(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    """The variables are rendered into the system text (`grounded-answer` 1.1.0 names the product): an answer
    written as the assistant of one product was served to a request for another, in the same tenant."""
    who = principal(f"vars-{uuid.uuid4().hex[:8]}")
    acme: dict[str, Any] = {"template_variables": {"product_name": "Acme"}}
    async with start_inference(upstream_config(upstream, MODELS), cache_enabled=True) as inference:
        await inference.stream(QUESTION, who=who, **acme)
        assert (await until_cached(inference, QUESTION, who, **acme)).summary.cache.outcome == (
            cache_pb2.CACHE_OUTCOME_EXACT_HIT
        )
        other = await inference.stream(QUESTION, who=who, template_variables={"product_name": "Globex"})
        assert other.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS
        # The template's default is a value of its own: it renders other system text than either.
        default = await inference.stream(QUESTION, who=who)
        assert default.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS
        # A variable the template does not use changes nothing the model sees: still a hit.
        unused = await inference.stream(
            QUESTION, who=who, template_variables={"product_name": "Acme", "unused": "x"}
        )
        assert unused.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT


async def test_an_answer_is_served_only_to_requests_routed_to_the_same_model(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    """A route picks its model per request (complexity rules, canary variants): keyed on the route alone, the
    cheap model's answer was served to a request the route sent to the strong one (here by its feature)."""
    who = principal(f"route-{uuid.uuid4().hex[:8]}")
    models = [
        {"name": "cheap", "provider": "openai", "upstream_model": "cheap"},
        {"name": "strong", "provider": "anthropic", "upstream_model": "strong"},
    ]
    rule = {"name": "legal", "features": ["legal"]}
    routes = [{"name": "tier", "complexity": {"cheap": "cheap", "strong": "strong", "rules": [rule]}}]
    async with start_inference(
        upstream_config(upstream, models, routes=routes), cache_enabled=True
    ) as inference:
        await inference.stream(QUESTION, who=who, model="tier")
        cached = await until_cached(inference, QUESTION, who, model="tier")
        assert cached.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT
        legal = await inference.stream(QUESTION, who=who, model="tier", feature="legal")
        assert legal.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS
        assert legal.summary.routing.model == "strong"
        # Another feature the rules ignore routes the same: the cheap model's answer is the right one.
        other = await inference.stream(QUESTION, who=who, model="tier", feature="chat")
        assert other.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT


async def test_a_fallback_models_answer_is_not_stored_for_the_model_the_request_was_routed_to(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    """The partition names the model the request was routed to, but the answer stored there was whichever model
    answered: during the chosen model's outage its fallback's answers were stored, then served for the whole TTL
    to every request for the chosen model after it recovered (a weaker or cheaper model's answer, as a hit)."""
    who = principal(f"fallback-store-{uuid.uuid4().hex[:8]}")
    models = [
        {"name": "gpt", "provider": "openai", "upstream_model": "gpt-chosen", "fallbacks": ["backup"]},
        {
            "name": "backup",
            "provider": "anthropic",
            "upstream_model": "backup-model;reply=An+answer+from+the+backup+model",
        },
    ]
    async with start_inference(
        upstream_config(upstream, models, retry={"max_attempts": 1}), cache_enabled=True
    ) as inference:
        upstream.outages.add("gpt-chosen")
        try:
            fallen = await inference.stream(QUESTION, who=who, model="gpt")
        finally:
            upstream.outages.clear()
        assert fallen.error is None and fallen.summary.routing.model == "backup"
        assert fallen.summary.routing.reason == routing_pb2.ROUTING_REASON_FALLBACK
        await settle_writes(inference, who.tenant_id)
        recovered = await inference.stream(QUESTION, who=who, model="gpt")
        assert recovered.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS, (
            recovered.summary.routing.model,
            recovered.text,
        )
        assert recovered.summary.routing.model == "gpt" and recovered.text == f"You said: {QUESTION}"
        # The chosen model's own answer is stored, and is what its requests get from the cache.
        cached = await until_cached(inference, QUESTION, who, model="gpt")
        assert cached.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_EXACT_HIT
        assert cached.summary.routing.model == "gpt" and cached.text == recovered.text


async def test_a_blank_answer_is_not_stored(
    start_inference: StartInference, upstream: UpstreamServer
) -> None:
    """A model that finished (STOP) without any text had its blank answer stored and served, as a complete
    answer at zero cost, to every equal question for the whole TTL, instead of asking the model again."""
    who = principal(f"blank-{uuid.uuid4().hex[:8]}")
    models = [{"name": "gpt", "provider": "openai", "upstream_model": "gpt-blank;reply="}]
    async with start_inference(upstream_config(upstream, models), cache_enabled=True) as inference:
        blank = await inference.stream(QUESTION, who=who)
        assert blank.error is None and blank.text == ""
        assert blank.summary.finish_reason == generation_pb2.FINISH_REASON_STOP
        await settle_writes(inference, who.tenant_id)
        again = await inference.stream(QUESTION, who=who)
        assert again.summary.cache.outcome == cache_pb2.CACHE_OUTCOME_MISS, again.deltas
    assert len(upstream.requests_for("gpt-blank")) == 2, "the model is asked again"
