"""The governed chat flow, everything after authentication: the seam the chat RPCs and the job worker share.

``ChatFlow.stream`` runs authorize → (screen input ∥ reserve budget ∥ retrieve) → infer → screen output while
streaming (in this process, with moderation's stream screener, which also restores the caller's masked values:
``output_screening.py``) → summary, then settles usage
and audits in a tracked task after the summary went out (off the caller's critical path; the server's drain
waits for it; undeliverable results go to the outbox). ``complete`` is the same flow collected. Errors are the
kit's typed errors (``parapet.kit.errors``), exactly what a ``Chat`` caller receives as its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from google.protobuf import duration_pb2, timestamp_pb2

from parapet import tokens
from parapet.auth.v1 import tenant_policy_pb2
from parapet.gateway.v1 import chat_pb2, chat_service_pb2
from parapet.inference.v1 import (
    cache_pb2,
    completion_pb2,
    generation_pb2,
    inference_service_pb2,
    message_pb2,
    model_pb2,
)
from parapet.kit import metrics, telemetry
from parapet.kit.app import Resources
from parapet.kit.context import deadline_passed, remaining_time, without_deadline
from parapet.kit.errors import ParapetError, Unavailable
from parapet.kit.permissions import has_permission, missing
from parapet.metering.v1 import metering_service_pb2
from parapet.retrieval.v1 import retrieval_service_pb2
from services.auth.invalidation import InvalidationListener
from services.gateway import screening
from services.gateway.caller import Caller
from services.gateway.catalog import ModelCatalog, price
from services.gateway.chat_bounds import CallerNotReading
from services.gateway.delivery import Deliveries
from services.gateway.errors import is_down, relayed
from services.gateway.headroom import BudgetHeadroom
from services.gateway.idempotency import IdempotencyStore, Replay, request_hash
from services.gateway.inference_stream import InferenceStream
from services.gateway.output_screening import OutputScreening
from services.gateway.peers import Peers
from services.gateway.policy import TenantPolicies
from services.gateway.records import Outcome, audit_record, settle_request
from services.gateway.settings import GatewaySettings
from services.gateway.validation import validate
from services.moderation.engine import record_findings
from services.moderation.stream import StreamScreener, StreamStep
from services.retrieval.limits import MAX_QUERY_CHARS
from services.retrieval.permissions import DOCUMENTS_READ  # what retrieval requires of a grounded chat

log = logging.getLogger(__name__)

Event = chat_service_pb2.StreamChatResponse
_NO_DEADLINE_LEASE = 900.0  # an idempotency key whose run has no deadline is taken over after this
_DEFAULT_TOP_K = 8
_CHUNK_TOKENS = 320  # retrieval's chunk size (256 word pieces by default) with margin


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(max(0, int(seconds * 1e9)))
    return value


def _notice(kind: chat_pb2.NoticeType.ValueType, message: str) -> Event:
    return Event(notice=chat_pb2.Notice(type=kind, message=message))


def _prompt_tokens(messages: list[str], context: list[completion_pb2.ContextChunk]) -> int:
    """A cheap upper-leaning estimate for the reservation (about 3 characters per token, plus framing);
    settlement uses the provider's exact count."""
    chars = sum(len(t) for t in messages) + sum(len(c.text) + len(c.title) for c in context)
    return chars // 3 + 8 * (len(messages) + len(context)) + 64


@dataclass
class _Run:
    caller: Caller
    request: chat_service_pb2.StreamChatRequest
    request_id: str
    outcome: Outcome
    started: float = field(default_factory=time.perf_counter)
    provider_wait: float = 0.0
    overhead: float | None = None  # the time Parapet added, as the summary reported it
    prompt_tokens: int = 0  # the prompt as the reservation held it (the context at its largest)
    model: str = ""
    max_tokens: int = 0  # the output limit sent to the model (and reserved for)
    max_tokens_capped: bool = False  # the policy lowered the caller's max_tokens
    prices: tuple[model_pb2.Model, ...] = ()  # the price list the budget hold was priced from
    # An idempotent replay or a refused claim of its key: no chat ran, nothing is observed, settled or audited.
    unrecorded: bool = False
    claimed: bool = False  # this call owns its idempotency key's row (the finaliser completes or frees it)
    # The budget hold still being asked for when the caller left: left to finish (metering may already have
    # taken it), so that the finaliser releases what it was granted instead of leaving it held until its TTL.
    pending_hold: asyncio.Future[Any] | None = None
    delivered: bool = False  # a text delta went out
    policy: tenant_policy_pb2.TenantPolicy | None = None  # the tenant's, once read
    degraded: set[str] = field(default_factory=set)  # dependencies the chat went on without


def _result(status_code: int) -> str:
    if status_code == 0:
        return "ok"
    return "cancelled" if status_code == grpc.StatusCode.CANCELLED.value[0] else "error"


def _stopped_status() -> grpc.StatusCode:
    """How a chat stopped from the outside ended: DEADLINE_EXCEEDED when the call's deadline has run out
    (grpc cancels the handler alike for that and for a caller who leaves), else CANCELLED."""
    return grpc.StatusCode.DEADLINE_EXCEEDED if deadline_passed() else grpc.StatusCode.CANCELLED


def _observe(run: _Run) -> None:
    """The chat's metrics, once it ended: the time Parapet added (the summary's own figure when one went out,
    so the histogram and what callers saw agree), how it ended, and what it went on without."""
    overhead = run.overhead
    if overhead is None:  # ended before a summary: refused, failed or cancelled
        overhead = max(0.0, run.outcome.duration - run.provider_wait)
    metrics.observe_chat(overhead, _result(run.outcome.status_code), run.degraded)


def _budgeted(policy: tenant_policy_pb2.TenantPolicy, caller: Caller) -> bool:
    """Whether any budget of the policy applies to the caller (metering's own rule, docs/metering.md)."""
    p = caller.principal
    for budget in policy.budgets:
        if budget.scope == tenant_policy_pb2.BUDGET_SCOPE_TENANT:
            return True
        if budget.scope == tenant_policy_pb2.BUDGET_SCOPE_USER and budget.scope_id in ("", p.subject):
            return True
        if (
            budget.scope == tenant_policy_pb2.BUDGET_SCOPE_API_KEY
            and p.api_key_id
            and budget.scope_id in ("", p.api_key_id)
        ):
            return True
    return False


@dataclass
class _Prepared:
    request: inference_service_pb2.StreamCompleteRequest
    screened: screening.ScreenedInput
    first: list[Event]  # sent before the first delta: citations, then notices


def _require_readable(run: _Run, replay: Replay) -> None:
    """A stored answer with citations replays only to a credential that may read documents: run again, its
    retrieval would refuse a chat-only key of the same user, so the replay must not hand that key the
    documents' titles and grounded text. Refused like any chat (and audited: the run is recorded)."""
    cited = any(event.HasField("citation") for event in replay.events)
    if cited and not has_permission(run.caller.principal, DOCUMENTS_READ):
        run.unrecorded = False
        raise missing(DOCUMENTS_READ, "replaying an answer grounded in documents")


def _raise_first_failure(run: _Run, steps: list[asyncio.Future[Any]]) -> None:
    """Counts what blocked input screening found, then raises the first step's failure in step order."""
    for step in steps:
        error = step.exception()
        if isinstance(error, screening.InputBlocked):
            run.outcome.findings.update(screening.count(error.findings))
    for step in steps:
        error = step.exception()
        if error is not None:
            raise error


class ChatFlow:
    """One per process; safe for concurrent use (it holds channels and caches, no per-request state)."""

    def __init__(
        self,
        settings: GatewaySettings,
        peers: Peers,
        deliveries: Deliveries,
        idempotency: IdempotencyStore,
    ) -> None:
        self._settings = settings
        self._peers = peers
        self._deliveries = deliveries
        self._idempotency = idempotency
        self._timeout = settings.gateway_downstream_timeout_seconds
        self.policies = TenantPolicies(peers, settings)
        self.catalog = ModelCatalog(peers, settings)
        self._output_screening = OutputScreening()
        # Callers whose model call may start beside their budget hold (headroom.py); as many as the
        # authentications remembered: the same callers.
        self._headroom = BudgetHeadroom(settings.gateway_identity_cache_size)
        # Called with a tenant id when auth announces a change of that tenant, and with nothing when changes
        # may have been missed; authentication adds its cache here too.
        self.on_tenant_change: list[Any] = [
            self.policies.invalidate_tenant,
            self.catalog.invalidate_tenant,
            self._headroom.withhold_tenant,  # a new policy may bring new limits
        ]
        self.on_reset: list[Any] = [self.policies.clear, self._headroom.forget]
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, resources: Resources[GatewaySettings]) -> ChatFlow:
        """The flow on the service's resources; its channels, relay and listener close with them, after the
        finalisers of answered requests have run."""
        settings = resources.settings
        database = resources.require_database()
        peers = Peers.open(settings)
        idempotency = IdempotencyStore(database, ttl_seconds=settings.gateway_idempotency_seconds)
        deliveries = Deliveries(
            database,
            resources.require_bus(),
            peers,
            idempotency,
            interval=settings.gateway_outbox_interval_seconds,
            timeout=settings.gateway_downstream_timeout_seconds,
        )
        flow = cls(settings, peers, deliveries, idempotency)
        resources.cleanup.push_async_callback(peers.close)
        resources.spawn(deliveries.run(), name="gateway-outbox-relay")
        if settings.database_url:
            listener = InvalidationListener(settings.database_url, flow.on_tenant_change, flow.on_reset)
            resources.spawn(listener.run(), name="gateway-cache-invalidation")
        # Registered last, so it runs first on shutdown: finalisers still need the channels and the relay.
        resources.cleanup.push_async_callback(flow.drain)
        return flow

    async def delete_replays(self, tenant_id: str, user_id: str) -> int:
        """Delete the stored answers of ``user_id``'s idempotent chats; returns how many. A chat of theirs still
        running loses its row too: its answer, stored by an UPDATE of that row, then lands nowhere."""
        return await self._idempotency.delete_user(tenant_id, user_id)

    @property
    def deliveries(self) -> Deliveries:
        return self._deliveries

    @property
    def peers(self) -> Peers:
        return self._peers

    async def drain(self) -> None:
        """Wait for every pending finaliser (settlement, audit, idempotency record)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _track(self, coroutine: Any, name: str) -> None:
        # Run outside the call's deadline, which the task would otherwise inherit with the request's context:
        # a chat ended by its deadline had its Settle and Release sent with no time left, so the settlement
        # went to the outbox as if metering were down and the hold stayed held until its TTL.
        task: asyncio.Task[None] = asyncio.create_task(coroutine, name=name, context=without_deadline())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the public seam ---------------------------------------------------------------------------------

    async def stream(
        self, caller: Caller, request: chat_service_pb2.StreamChatRequest, *, request_id: str
    ) -> AsyncGenerator[Event, None]:
        """The answer as events: citations, then screened text deltas and notices, then one summary."""
        validate(request)
        key = request.idempotency_key
        request_time = timestamp_pb2.Timestamp()
        request_time.GetCurrentTime()
        run = _Run(
            caller,
            request,
            request_id,
            Outcome(
                caller=caller,
                request_id=request_id,
                request_time=request_time,
                feature=request.feature,
                requested_model=request.model,
                labels=dict(request.metadata),
                retention=tenant_policy_pb2.RetentionPolicy(),
                prompt_raw=list(request.messages),
                # The record leads to the chat's trace (docs/observability.md); it was always empty before
                # 2026-12-06. A job item's is the worker's trace, one per job.
                trace_id=telemetry.current_trace_id() or "",
            ),
        )
        events: list[Event] = []
        try:
            # Authorized before a stored answer is replayed: a key whose owner lost the permission (a role
            # changed, a narrower key of the same user) replays nothing.
            await self._admit(run)
            if key:
                replay = await self._claim(run)
                if replay is not None:
                    _require_readable(run, replay)
                    for event in replay.events:
                        yield event
                    return
            # Closed here, not left to the garbage collector: grpc.aio cancels a handler waiting to write (a
            # caller who stopped reading) outside these generators, which are then closed from the outside in.
            # Left open, _run's own finally (the provider call stopped, what it wrote counted) ran after this
            # one's had already settled and audited the chat: for nothing.
            async with contextlib.aclosing(self._run(run)) as answer:
                async for event in answer:
                    if key:
                        events.append(event)
                    yield event
        except ParapetError as error:
            run.outcome.status_code = error.code.value[0]
            run.outcome.error_reason = error.reason
            if isinstance(error, CallerNotReading) and not run.outcome.finish_reason:
                # Stopped from the outside like a caller who left: what reached a provider is billed.
                run.outcome.finish_reason = generation_pb2.FINISH_REASON_CANCELLED
            raise
        except (asyncio.CancelledError, GeneratorExit):
            # grpc cancels the handler alike when the caller leaves and when its deadline passes; the caller
            # then sees DEADLINE_EXCEEDED, and so must the audit record and a released hold's reason.
            ended = _stopped_status()
            run.outcome.status_code = ended.value[0]
            run.outcome.error_reason = ended.name
            if run.outcome.finish_reason in (generation_pb2.FINISH_REASON_UNSPECIFIED,):
                run.outcome.finish_reason = generation_pb2.FINISH_REASON_CANCELLED
            raise
        except BaseException:
            run.outcome.status_code = grpc.StatusCode.INTERNAL.value[0]
            run.outcome.error_reason = "INTERNAL_ERROR"
            raise
        finally:
            if not run.unrecorded:
                run.outcome.duration = time.perf_counter() - run.started
                _observe(run)
                # A task of its own: it must finish even though this generator is being cancelled with the call.
                self._track(self._finalise(run, events), name=f"finalise-{request_id}")

    async def _claim(self, run: _Run) -> Replay | None:
        """The idempotency key's claim; a replay or a refusal (in progress, reused) marks the run unrecorded."""
        remaining = remaining_time()
        run.unrecorded = True
        claim = asyncio.ensure_future(
            self._idempotency.claim(
                run.caller.tenant_id,
                run.caller.principal.subject,
                run.request.idempotency_key,
                request_hash(run.request, run.caller.principal.groups),
                run.request_id,
                lease_seconds=remaining + 5 if remaining is not None else _NO_DEADLINE_LEASE,
            )
        )
        try:
            # Shielded: a caller leaving mid-claim must not leave a row its COMMIT took (the commit may have
            # gone through before the cancellation) that nobody frees: every retry would be refused
            # REQUEST_IN_PROGRESS until the lease ends. The claim ends on its own; a row it took is freed.
            replay = await asyncio.shield(claim)
        except asyncio.CancelledError:
            self._track(self._free_claim(run, claim), name=f"free-claim-{run.request_id}")
            raise
        run.unrecorded = replay is not None
        run.claimed = replay is None
        return replay

    async def _free_claim(self, run: _Run, claim: asyncio.Future[Replay | None]) -> None:
        """Delete the row ``claim`` took for a call that was gone before it learnt so (nothing ran)."""
        await asyncio.wait([claim])
        if claim.cancelled() or claim.exception() is not None or claim.result() is not None:
            return  # no row of this call's: refused, replayed, or the database failed (rolled back)
        with _logged_failure("freeing the idempotency key of a cancelled chat", run.request_id):
            key = run.request.idempotency_key
            await self._idempotency.abandon(
                run.caller.tenant_id, run.caller.principal.subject, key, run.request_id
            )

    async def complete(
        self, caller: Caller, request: chat_service_pb2.ChatRequest, *, request_id: str
    ) -> chat_service_pb2.ChatResponse:
        """The same flow as :meth:`stream`, collected."""
        streamed = chat_service_pb2.StreamChatRequest.FromString(request.SerializeToString())
        response = chat_service_pb2.ChatResponse()
        parts: list[str] = []
        async for event in self.stream(caller, streamed, request_id=request_id):
            kind = event.WhichOneof("event")
            if kind == "text_delta":
                parts.append(event.text_delta.text)
            elif kind == "citation":
                response.citations.append(event.citation)
            elif kind == "notice":
                response.notices.append(event.notice)
            elif kind == "summary":
                response.summary.CopyFrom(event.summary)
        response.text = "".join(parts)
        return response

    # -- the steps ------------------------------------------------------------------------------------------

    def metadata(self, run: _Run) -> tuple[tuple[str, str], ...]:
        return (*run.caller.auth_metadata(), ("x-request-id", run.request_id))

    def _max_tokens(
        self, request: chat_service_pb2.StreamChatRequest, policy: tenant_policy_pb2.TenantPolicy
    ) -> tuple[int, bool]:
        """The output limit sent to the model (and reserved for), and whether the policy lowered the caller's."""
        cap = policy.models.max_tokens_per_request
        if request.generation.HasField("max_tokens"):
            wanted = request.generation.max_tokens
            return (cap, True) if cap and wanted > cap else (wanted, False)
        default = self._settings.gateway_default_max_tokens
        return (min(default, cap) if cap else default), False

    async def _reserve(
        self, run: _Run, policy: tenant_policy_pb2.TenantPolicy, max_tokens: int
    ) -> list[Event]:
        estimate = await self.catalog.estimate(run.caller, run.model, run.prompt_tokens, max_tokens)
        run.prices = estimate.models
        try:
            reply = await self._peers.metering.stub.Reserve(
                metering_service_pb2.ReserveRequest(
                    request_id=run.request_id,
                    feature=run.request.feature,
                    model=run.model,
                    estimated_tokens=estimate.tokens,
                    estimated_cost=estimate.cost,
                ),
                metadata=self.metadata(run),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            self._headroom.withhold_tenant(run.caller.tenant_id)
            if not is_down(error):
                raise relayed(error) from None
            mode = policy.degradation.metering_unavailable
            refuse = mode == tenant_policy_pb2.METERING_DEGRADATION_REFUSE or (
                mode != tenant_policy_pb2.METERING_DEGRADATION_PROCEED and _budgeted(policy, run.caller)
            )
            if refuse:
                raise Unavailable(
                    "Budget checks are unavailable and this tenant has budgets; please retry shortly.",
                    reason="METERING_UNAVAILABLE",
                    retry_after=1.0,
                ) from None
            log.warning(
                "metering unavailable; answering and settling later", extra={"request_id": run.request_id}
            )
            run.degraded.add("metering")
            return []
        run.outcome.reservation_id = reply.reservation.reservation_id
        self._headroom.granted(run.caller.principal, warned=bool(reply.soft_limit_warnings))
        return [
            Event(
                notice=chat_pb2.Notice(
                    type=chat_pb2.NOTICE_TYPE_BUDGET_SOFT_LIMIT,
                    message=f"Budget '{w.budget_id}' is at {w.used_percent}% of its limit.",
                    budget_id=w.budget_id,
                    budget_used_percent=w.used_percent,
                )
            )
            for w in reply.soft_limit_warnings
        ]

    async def _retrieve(
        self, run: _Run, policy: tenant_policy_pb2.TenantPolicy
    ) -> tuple[list[Any], list[Event]]:
        options = run.request.retrieval
        # Retrieval's longest query: a question may be far longer (validation.MAX_MESSAGE_CHARS), and sent
        # whole it was refused INVALID_ARGUMENT naming `query`, a field no chat request has. The embedding model
        # reads only the first 256 word pieces of a query anyway, so its head finds what the whole would. The
        # head of its text: a question after 8,192 blank characters was sent as blanks and refused alike (until
        # 2026-12-06).
        question = run.request.messages[-1].content.lstrip()[:MAX_QUERY_CHARS]
        try:
            reply = await self._peers.retrieval.stub.Query(
                retrieval_service_pb2.QueryRequest(
                    query=question,
                    top_k=options.top_k or _DEFAULT_TOP_K,
                    min_score=options.min_score,
                    metadata_filter=dict(options.metadata_filter),
                    document_ids=list(options.document_ids),
                    request_id=run.request_id,
                ),
                metadata=self.metadata(run),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            if not is_down(error):
                raise relayed(error) from None
            refuse = (
                options.mode == chat_pb2.RETRIEVAL_MODE_REQUIRED
                or policy.degradation.retrieval_unavailable == tenant_policy_pb2.RETRIEVAL_DEGRADATION_REFUSE
            )
            if refuse:
                raise Unavailable(
                    "Document search is unavailable, and this request needs it; please retry shortly.",
                    reason="RETRIEVAL_UNAVAILABLE",
                    retry_after=1.0,
                ) from None
            run.degraded.add("retrieval")
            return [], [
                _notice(
                    chat_pb2.NOTICE_TYPE_RETRIEVAL_DEGRADED,
                    "Document search was unavailable; this answer is not grounded in your documents.",
                )
            ]
        return list(reply.chunks), []

    async def _admit(self, run: _Run) -> None:
        """The tenant's policy, the model and output limit it gives this request, and the caller's right to
        them (both cached per policy version): the chat's first refusal, before anything is spent."""
        caller, request = run.caller, run.request
        policy = run.policy = await self.policies.policy(caller)
        run.outcome.retention = policy.retention
        run.model = request.model or policy.models.default_model
        run.max_tokens, run.max_tokens_capped = self._max_tokens(request, policy)
        await self.policies.authorize(
            caller, model=run.model, feature=request.feature, max_tokens=run.max_tokens
        )

    async def _prepare(self, run: _Run) -> tuple[_Prepared, InferenceStream | None]:
        """Everything before the model call: its request, the screened input and the events to send before
        the first delta (citations, then notices); and the model call when it was started beside the budget
        hold (``headroom.py``), else None."""
        caller, request, policy, max_tokens = run.caller, run.request, run.policy, run.max_tokens
        assert policy is not None  # _admit read it
        retrieve = request.retrieval.mode != chat_pb2.RETRIEVAL_MODE_DISABLED
        # The reservation runs beside retrieval, so the context it will add is held at its largest.
        context_tokens = (request.retrieval.top_k or _DEFAULT_TOP_K) * _CHUNK_TOKENS if retrieve else 0
        run.prompt_tokens = _prompt_tokens([m.content for m in request.messages], []) + context_tokens
        # Independent steps run at once: screening, the budget hold and the search cost one round trip.
        screen_task = asyncio.ensure_future(
            screening.screen_input(
                self._peers,
                caller,
                request.messages,
                policy,
                request_id=run.request_id,
                timeout=self._timeout,
            )
        )
        reserve_task = asyncio.ensure_future(self._reserve(run, policy, max_tokens))
        retrieve_task = asyncio.ensure_future(self._retrieve(run, policy)) if retrieve else None
        steps: list[asyncio.Future[Any]] = [screen_task, reserve_task]
        if retrieve_task is not None:
            steps.append(retrieve_task)
        speculate = self._settings.gateway_speculative_inference and self._headroom.clear(caller.principal)
        # Speculating, the model needs only the screened input and the context; else every step first.
        needed = [step for step in steps if step is not reserve_task] if speculate else steps
        try:
            await asyncio.wait(needed)
            if any(step.exception() is not None for step in needed):
                await asyncio.wait(steps)  # the hold too: a failure in step order is the caller's answer
        except asyncio.CancelledError:
            for step in steps:
                if step.done() and not step.cancelled():
                    step.exception()  # retrieved: the caller left, its failure no longer matters
                elif step is reserve_task:
                    run.pending_hold = step
                else:
                    step.cancel()
            raise
        _raise_first_failure(run, [step for step in steps if step.done()])
        screened: screening.ScreenedInput = screen_task.result()
        chunks: list[Any] = []
        degraded: list[Event] = []
        if retrieve_task is not None:
            chunks, degraded = retrieve_task.result()
        prepared = self._inference_request(run, screened, chunks, max_tokens)
        notices = self._input_notices(run, screened, max_tokens, run.max_tokens_capped)
        stream = None
        if not reserve_task.done():
            stream = self._start_inference(run, prepared.request)
            try:
                # A refusal raises here, before anything of the answer went out. Shielded: a caller leaving
                # must not abandon a hold metering may already have taken.
                await asyncio.shield(reserve_task)
            except BaseException as error:
                if not reserve_task.done():
                    run.pending_hold = reserve_task
                self._unanswered(run, stream, error)
                raise
            metrics.record_speculative_call("kept")
        # Citations, then the hold's soft-limit warnings, retrieval's degradation, then the input's notices.
        prepared.first.extend([*reserve_task.result(), *degraded, *notices])
        return prepared, stream

    def _unanswered(self, run: _Run, stream: InferenceStream, error: BaseException) -> None:
        """A model call started beside the budget hold, stopped before the hold was granted."""
        stream.cancel()
        run.outcome.speculation_unanswered = True
        # The audit record names the model inference announced it was sending the prompt to; when no
        # announcement had arrived (none made yet, or one still in flight) it names the model asked for.
        sent = stream.prompt_sent
        if sent is not None:
            run.outcome.estimated_model, run.outcome.estimated_provider = sent.model, sent.provider
        metrics.record_speculative_call(
            "cancelled" if isinstance(error, asyncio.CancelledError) else "refused"
        )

    def _input_notices(
        self, run: _Run, screened: screening.ScreenedInput, max_tokens: int, capped: bool
    ) -> list[Event]:
        """The notices about the request itself: max_tokens capped, screening degraded, input findings."""
        notices: list[Event] = []
        if capped:
            notices.append(
                _notice(
                    chat_pb2.NOTICE_TYPE_MAX_TOKENS_CAPPED,
                    f"max_tokens was lowered to this tenant's limit of {max_tokens}.",
                )
            )
        if not screened.screened:
            run.degraded.add("moderation")
            notices.append(
                _notice(
                    chat_pb2.NOTICE_TYPE_MODERATION_DEGRADED,
                    "Content screening was unavailable; your message reached the model unscreened "
                    "(the answer was still screened).",
                )
            )
        notices.extend(
            Event(notice=n) for n in screening.moderation_notices(screening.count(screened.findings))
        )
        return notices

    def _inference_request(
        self, run: _Run, screened: screening.ScreenedInput, chunks: list[Any], max_tokens: int
    ) -> _Prepared:
        """The model call's request from the screened input and the retrieved chunks, and the citations."""
        request = run.request
        run.outcome.findings.update(screening.count(screened.findings))
        context = [
            completion_pb2.ContextChunk(
                document_id=c.citation.document_id,
                title=c.citation.title,
                source_uri=c.citation.source_uri,
                text=c.text,
            )
            for c in chunks
        ]
        run.outcome.chunk_count = len(context)
        run.outcome.document_ids = [c.document_id for c in context]
        run.outcome.prompt_sent = list(screened.texts)
        generation = generation_pb2.GenerationConfig()
        generation.CopyFrom(request.generation)
        generation.max_tokens = max_tokens
        inference_request = inference_service_pb2.StreamCompleteRequest(
            messages=[
                message_pb2.Message(role=m.role, content=text)
                for m, text in zip(request.messages, screened.texts, strict=True)
            ],
            model=request.model,
            context=context,
            generation=generation,
            cache_mode=request.cache_mode,
            request_id=run.request_id,
            feature=request.feature,
            report_prompt_sent=True,  # what a stream stopped before its summary is billed for (_estimate)
        )
        if request.HasField("prompt_template"):
            inference_request.prompt_template.CopyFrom(request.prompt_template)
        return _Prepared(inference_request, screened, [Event(citation=c.citation) for c in chunks])

    def _start_inference(
        self, run: _Run, request: inference_service_pb2.StreamCompleteRequest
    ) -> InferenceStream:
        run.outcome.inference_started = True
        return InferenceStream(
            self._peers.inference.stub.StreamComplete(request, metadata=self.metadata(run))
        )

    async def _run(self, run: _Run) -> AsyncGenerator[Event, None]:
        prepared, stream = await self._prepare(run)
        output = _Output(run)
        # The answer is always screened, here in the gateway: even when moderation was down and the tenant
        # let the question go unscreened, its own detectors and terms still apply to what comes back.
        assert run.policy is not None
        try:
            screener = self._output_screening.stream(run.policy, prepared.screened.masked_values)
        except BaseException:
            if stream is not None:
                stream.cancel()
            raise
        if stream is None:
            stream = self._start_inference(run, prepared.request)
        try:
            # Sent while the model call is under way: the citations and notices cost no wait of their own.
            for event in prepared.first:
                yield event
            async with contextlib.aclosing(output.screened(screener, stream)) as screened:
                async for event in screened:
                    yield event
        finally:
            stream.cancel()  # a no-op once it finished; on cancellation this stops the provider call
            if run.outcome.summary is None:
                self._estimate(run, stream.prompt_sent)
        async for event in output.finish():
            yield event

    def _estimate(self, run: _Run, prompt_sent: completion_pb2.PromptSent | None) -> None:
        """Usage of a stream that ended without inference's summary. Only a provider attempt costs anything,
        and inference announces each before calling the provider (``report_prompt_sent``): the attempt under
        way is billed for its prompt as inference counted it (template included, in the model's encoding)
        and for the output received so far, counted in that encoding, at that model's price. Without an
        announcement nothing reached a provider (a cached answer, which costs nothing when it completes
        either, or a stream stopped before its first attempt): nothing is billed."""
        if prompt_sent is None:
            run.outcome.estimated_usage = completion_usage(0, 0)
            return
        prompt = prompt_sent.prompt_tokens
        encoding = tokens.known_encoding(prompt_sent.token_encoding)
        completion = tokens.count("".join(run.outcome.response_received), encoding)
        run.outcome.estimated_usage = completion_usage(prompt, completion)
        run.outcome.estimated_cost = price(run.prices, prompt_sent.model, prompt, completion)
        run.outcome.estimated_model, run.outcome.estimated_provider = prompt_sent.model, prompt_sent.provider

    async def _finalise(self, run: _Run, events: list[Event]) -> None:
        outcome = run.outcome
        # Each step on its own: one failing (the idempotency row's database, the outbox) must not cost the
        # others; the settlement and the audit record are what must never be lost. The stored answer goes
        # first so that a retry right after the answer is replayed (or, after a failure, runs again) rather
        # than told the call still runs, even while a pending budget hold is still awaited below.
        if run.claimed:  # not when refused before the claim (authorization): there is no row of this call's
            with _logged_failure("storing the chat's idempotent answer", run.request_id):
                await self._store_answer(run, events)
        if run.pending_hold is not None:
            await asyncio.wait([run.pending_hold])  # bounded by the call's timeout; sets the reservation id
            if not run.pending_hold.cancelled():
                run.pending_hold.exception()  # retrieved: a refusal nobody is left to hear
        with _logged_failure("settling the chat's usage", run.request_id):
            if _produced(outcome):
                await self._deliveries.settle(outcome.caller, settle_request(outcome))
            elif outcome.reservation_id:
                reason = outcome.error_reason or "NOTHING_PRODUCED"
                await self._deliveries.release(outcome.caller, outcome.reservation_id, reason)
        with _logged_failure("auditing the chat", run.request_id):
            await self._deliveries.audit(audit_record(outcome))

    async def _store_answer(self, run: _Run, events: list[Event]) -> None:
        """The answer kept for the idempotency key's retries, or the key freed for one when nothing is kept."""
        outcome, key = run.outcome, run.request.idempotency_key
        tenant_id, subject = outcome.caller.tenant_id, outcome.caller.principal.subject
        answered = outcome.status_code == 0 and outcome.finish_reason not in (
            generation_pb2.FINISH_REASON_ERROR,
            generation_pb2.FINISH_REASON_CANCELLED,
        )
        if answered:
            await self._idempotency.complete(tenant_id, subject, key, run.request_id, events)
        else:
            await self._idempotency.abandon(tenant_id, subject, key, run.request_id)


def _produced(outcome: Outcome) -> bool:
    """Whether the chat used the model (settled), as opposed to ending before it (its hold released)."""
    return not outcome.speculation_unanswered and (
        outcome.summary is not None
        or bool(outcome.response_received)
        or (outcome.finish_reason == generation_pb2.FINISH_REASON_CANCELLED and outcome.inference_started)
    )


@contextlib.contextmanager
def _logged_failure(what: str, request_id: str) -> Iterator[None]:
    """A finaliser step's failure, logged with its traceback and not raised: the next steps still run."""
    try:
        yield
    except Exception:
        log.exception("%s failed", what, extra={"request_id": request_id})


def completion_usage(prompt: int, completion: int) -> Any:
    from parapet.usage.v1 import token_usage_pb2

    return token_usage_pb2.TokenUsage(prompt_tokens=prompt, completion_tokens=completion, estimated=True)


class _Output:
    """The model's output on its way to the caller: screened while streaming, then the closing events."""

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._output_findings: Counter[tuple[int, int]] = Counter()
        self._blocked = False
        self._error: ParapetError | None = None

    def _delta(self, text: str) -> Event:
        run = self._run
        if not run.delivered:
            run.delivered = True
            run.outcome.time_to_first_token = time.perf_counter() - run.started
        run.outcome.response_sent.append(text)
        return Event(text_delta=chat_pb2.TextDelta(text=text))

    def _received(self, message: inference_service_pb2.StreamCompleteResponse) -> str | None:
        if message.HasField("text_delta"):
            self._run.outcome.response_received.append(message.text_delta.text)
            return message.text_delta.text
        self._run.outcome.summary = message.summary
        return None

    def _fail(self, error: grpc.aio.AioRpcError) -> None:
        if error.code() == grpc.StatusCode.CANCELLED:
            raise asyncio.CancelledError
        if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and deadline_passed():
            # The caller's deadline, passed on to inference, stopped the stream a moment before grpc cancels
            # this handler: settled as that cancellation would be (what reached a provider is billed), not
            # released as for a model call that failed.
            self._run.outcome.finish_reason = generation_pb2.FINISH_REASON_CANCELLED
        relay = relayed(error)
        if relay.reason == "ALL_PROVIDERS_UNAVAILABLE" and not self._run.delivered:
            relay = Unavailable(
                "No model provider is available right now, and no cached answer fits this question. "
                "Please retry shortly.",
                reason="ALL_PROVIDERS_UNAVAILABLE",
                retry_after=_retry_after(relay),
            )
        if not self._run.delivered and not self._run.outcome.response_received:
            raise relay
        self._error = relay

    async def screened(
        self, screener: StreamScreener, stream: InferenceStream
    ) -> AsyncGenerator[Event, None]:
        """The answer screened in this process as it streams (output_screening.py says why here): each
        delta goes through the stream screener, what it releases goes to the caller at once, and a
        blocking finding stops the provider's stream. An inference error is acted on after the held-back
        text was screened and released, as if the stream had ended there (and not at all after a block)."""
        failure: grpc.aio.AioRpcError | None = None
        try:
            async for message in stream.messages():
                text = self._received(message)
                if text is None:
                    continue
                step = screener.feed(text)
                released = self._screened_step(step)
                if released:
                    yield self._delta(released)
                if step.blocked:
                    self._blocked = True
                    stream.cancel()
                    return
        except grpc.aio.AioRpcError as error:
            failure = error
        finally:
            # Only the time spent waiting for inference: screening and sending are Parapet's.
            self._run.provider_wait = stream.waited
        step = screener.finish()  # the held-back end of the answer, or of what came before an error
        released = self._screened_step(step)
        if released:
            yield self._delta(released)
        if step.blocked:
            self._blocked = True
        elif failure is not None:
            self._fail(failure)

    def _screened_step(self, step: StreamStep) -> str:
        record_findings(step.findings, "output")
        self._output_findings.update(screening.count(step.findings))
        return step.released

    async def finish(self) -> AsyncGenerator[Event, None]:
        run = self._run
        outcome = run.outcome
        outcome.findings.update(self._output_findings)
        summary = outcome.summary
        if self._blocked:
            outcome.finish_reason = generation_pb2.FINISH_REASON_CONTENT_FILTER
        elif self._error is not None:
            outcome.finish_reason = generation_pb2.FINISH_REASON_ERROR
        elif summary is not None:
            outcome.finish_reason = summary.finish_reason
        else:
            outcome.finish_reason = generation_pb2.FINISH_REASON_ERROR
        for notice in screening.moderation_notices(self._output_findings):
            yield Event(notice=notice)
        if summary is not None and summary.cache.outcome == cache_pb2.CACHE_OUTCOME_FALLBACK_HIT:
            run.degraded.add("providers")
            yield _notice(
                chat_pb2.NOTICE_TYPE_CACHED_ANSWER_SERVED,
                "No model provider is available right now; this is a saved answer to a similar earlier "
                f"question (similarity {summary.cache.similarity:.2f}), not a new one.",
            )
        elif summary is not None and summary.routing.fallback_attempts:
            tried = ", ".join(a.model for a in summary.routing.fallback_attempts)
            yield _notice(
                chat_pb2.NOTICE_TYPE_FALLBACK_USED,
                f"The preferred model was unavailable ({tried}); {summary.routing.model} answered instead.",
            )
        total = time.perf_counter() - run.started
        run.overhead = max(0.0, total - run.provider_wait)
        chat_summary = chat_pb2.ChatSummary(
            request_id=run.request_id,
            finish_reason=outcome.finish_reason,
            usage=outcome.usage(),
            cost=outcome.cost(),
            parapet_duration=_duration(run.overhead),
            duration=_duration(total),
            policy_version=run.caller.policy_version,
        )
        if summary is not None:
            chat_summary.routing.CopyFrom(summary.routing)
            chat_summary.cache.CopyFrom(summary.cache)
            chat_summary.prompt_template.CopyFrom(summary.prompt_template)
        if outcome.time_to_first_token is not None:
            chat_summary.time_to_first_token.CopyFrom(_duration(outcome.time_to_first_token))
        yield Event(summary=chat_summary)
        if self._error is not None:
            raise self._error


def _retry_after(error: ParapetError) -> float:
    for detail in error.details:
        delay = getattr(detail, "retry_delay", None)
        if delay is not None:
            return max(float(delay.seconds + delay.nanos / 1e9), 0.1)
    return 1.0
