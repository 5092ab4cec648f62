"""A completion from request to summary: prompt, cache, routing, attempts with retries, breakers and fallback.

Deltas are yielded the moment a provider produces them; those that piled up behind a slow send go out as one
message (``parapet.kit.coalesce``, around the provider attempts only). Until the first delta has gone out, any failure is invisible to
the caller: the attempt is retried (retryable failures only, with backoff, within the deadline) and then the
next model of the chain is tried. After it, a failure ends the stream with a summary
(FINISH_REASON_ERROR, the usage so far) and a typed UNAVAILABLE ``STREAM_INTERRUPTED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from google.protobuf import duration_pb2
from opentelemetry import trace

from parapet import tokens
from parapet.inference.v1 import (
    cache_pb2,
    completion_pb2,
    generation_pb2,
    inference_service_pb2,
    message_pb2,
    prompt_template_pb2,
    routing_pb2,
)
from parapet.kit import metrics, telemetry
from parapet.kit.coalesce import coalesced
from parapet.kit.context import deadline_var, require_principal
from parapet.kit.errors import DeadlineExceeded, InvalidArgument, Unavailable
from parapet.kit.identity import Principal
from parapet.kit.inbound import replace_nul
from parapet.usage.v1 import money_pb2, token_usage_pb2
from services.inference.attempt import timed_events
from services.inference.attempt_metrics import AttemptClock, error_type
from services.inference.cache.keys import CacheKey, partition_key, scope_key
from services.inference.cache.store import CachedAnswer, NewEntry, SemanticCache
from services.inference.config import InferenceConfig, ModelConfig
from services.inference.policy import PolicySource
from services.inference.pricing import cost_micros_exact, to_micros
from services.inference.prompts import ContextDocument, PromptLibrary, RenderedPrompt
from services.inference.providers.base import (
    Delta,
    Finish,
    PromptCounted,
    PromptMessage,
    Provider,
    ProviderError,
    ProviderRequest,
    Usage,
)
from services.inference.resilience.breaker import Breakers
from services.inference.resilience.retry import next_delay
from services.inference.routing import Plan, RequestTraits, Router
from services.inference.validation import Request, validate

log = logging.getLogger(__name__)

Response = inference_service_pb2.StreamCompleteResponse
_Item = Response | tuple[int, ModelConfig]  # what an attempt run yields: messages, then (finish, model)

# The first deltas go out one by one, as soon as each is sent: the gateway's output screener holds back the
# unfinished word and the one before it, so with a word per delta (as providers stream prose) its first release
# needs the third delta. Merged into the burst after it instead, that third delta waited up to a read slice.
_LEAD = 3
_FINISH = {
    "stop": generation_pb2.FINISH_REASON_STOP,
    "length": generation_pb2.FINISH_REASON_LENGTH,
    "content_filter": generation_pb2.FINISH_REASON_CONTENT_FILTER,
}


@dataclass
class _Tally:
    """Usage and exact cost summed over every attempt that reached a provider."""

    prompt: int = 0
    completion: int = 0
    cached: int = 0
    estimated: bool = False
    cost: Decimal = Decimal(0)

    def add(self, model: ModelConfig, usage: Usage, estimated: bool) -> None:
        self.prompt += usage.prompt_tokens
        self.completion += usage.completion_tokens
        self.cached += usage.cached_tokens
        self.estimated = self.estimated or estimated
        self.cost += cost_micros_exact(model, usage)

    def usage(self) -> token_usage_pb2.TokenUsage:
        return token_usage_pb2.TokenUsage(
            prompt_tokens=self.prompt,
            completion_tokens=self.completion,
            cached_tokens=self.cached,
            estimated=self.estimated,
        )


@dataclass
class _Stream:
    """State of one request while it streams."""

    started: float
    plan: Plan
    rendered: RenderedPrompt
    context: list[ContextDocument]
    report_prompt_sent: bool = False  # the caller asked for a PromptSent before each provider attempt
    tally: _Tally = field(default_factory=_Tally)
    attempts: list[routing_pb2.FallbackAttempt] = field(default_factory=list)
    first_token: float | None = None
    text: list[str] = field(default_factory=list)
    # The outcome a summary reports when no cached answer is served: MISS once the request is keyed for the
    # cache (looked up or to be stored), BYPASSED when the cache is off or the request disabled it.
    cache_miss: cache_pb2.CacheOutcome.ValueType = cache_pb2.CACHE_OUTCOME_BYPASSED


def _duration(seconds: float) -> duration_pb2.Duration:
    result = duration_pb2.Duration()
    result.FromNanoseconds(int(seconds * 1e9))
    return result


# A cached answer streams back in pieces of about this many characters, cut at spaces: like a model's deltas,
# but not one message per word, since every message crosses the whole interceptor chain.
CACHED_PIECE_CHARS = 96


def _split_for_stream(text: str) -> list[str]:
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = start + CACHED_PIECE_CHARS
        if end < len(text):
            space = text.rfind(" ", start + 1, end)
            end = space if space > start else end
        pieces.append(text[start:end])
        start = end
    return pieces or [""]


def _cache_key(
    principal: Principal,
    plan: Plan,
    rendered: RenderedPrompt,
    generation: dict[str, object],
    conversation: list[PromptMessage],
    context: list[ContextDocument],
) -> CacheKey:
    """Whose answers this request may get: the tenant's, for the caller's access scope, in the partition of
    requests equivalent to it (same route and chosen model, template and rendered system text, parameters,
    earlier turns and grounding)."""
    return CacheKey(
        principal.tenant_id,
        scope_key(principal.groups),
        partition_key(
            plan.entry,
            plan.chain[0].name,
            rendered.template.name,
            rendered.template.version,
            rendered.system,
            generation,
            [(m.role, m.content) for m in conversation[:-1]],
            [(c.document_id, c.title, c.source_uri, c.text) for c in context],
        ),
    )


def _worth_storing(state: _Stream, finish: int, answered: ModelConfig) -> bool:
    """Whether an answer may be served from the cache to requests equivalent to this one.

    Only a whole answer (STOP: not cut at max_tokens, filtered, or broken off), with some text (a model that
    stopped without a word, as one sometimes does, is asked again rather than its blank served for the TTL),
    by the model the request was routed to: the partition names that model (``plan.chain[0]``), and a
    fallback's answer stored there, during that model's outage, was served for the TTL to every request for it
    after it recovered."""
    return (
        finish == generation_pb2.FINISH_REASON_STOP
        and answered.name == state.plan.chain[0].name
        and any(piece.strip() for piece in state.text)
    )


def _hit_outcome(hit: CachedAnswer, fallback: bool) -> cache_pb2.CacheOutcome.ValueType:
    if fallback:
        return cache_pb2.CACHE_OUTCOME_FALLBACK_HIT
    return cache_pb2.CACHE_OUTCOME_EXACT_HIT if hit.exact else cache_pb2.CACHE_OUTCOME_SEMANTIC_HIT


def _hit_detail(hit: CachedAnswer, fallback: bool) -> str:
    match = "exact match" if hit.exact else f"similar question (cosine {hit.similarity:.3f})"
    return f"every provider failed; cached answer, {match}" if fallback else match


class Engine:
    def __init__(
        self,
        config: InferenceConfig,
        providers: dict[str, Provider],
        breakers: Breakers,
        prompts: PromptLibrary,
        policy: PolicySource,
        cache: SemanticCache | None,
        default_template: str,
        tracer_provider: Any = None,
    ) -> None:
        self.config = config
        self._tracer = telemetry.genai_tracer(
            tracer_provider
        )  # the server's: a GenAI span per provider attempt
        self.providers = providers
        self.breakers = breakers
        self.prompts = prompts
        self.policy = policy
        self.cache = cache
        self.router = Router(config)
        self.default_template = default_template
        self._background: set[asyncio.Task[None]] = set()

    async def stream(self, request: Request) -> AsyncIterator[Response]:
        started = time.monotonic()
        principal = require_principal()
        validate(request)
        access = await self.policy.model_access(principal.tenant_id)
        template = self.prompts.get(
            request.prompt_template.name or self.default_template, request.prompt_template.version
        )
        conversation = [
            PromptMessage("user" if m.role == message_pb2.ROLE_USER else "assistant", m.content)
            for m in request.messages
        ]
        context = [ContextDocument(c.document_id, c.title, c.source_uri, c.text) for c in request.context]
        rendered = self.prompts.render(template, dict(request.template_variables), context, conversation)
        question = conversation[-1].content
        chat = ((("system", rendered.system),) if rendered.system else ()) + tuple(
            (m.role, m.content) for m in rendered.messages
        )
        traits = RequestTraits(
            prompt_tokens=tokens.count_chat(chat),
            question=question,
            messages=len(conversation),
            context_chunks=len(context),
            feature=request.feature,
        )
        plan = self.router.plan(request.model, access, traits, principal.tenant_id, principal.subject)
        fitting = tuple(m for m in plan.chain if m.context_window_tokens > traits.prompt_tokens)
        if not fitting:
            raise InvalidArgument(
                f"the prompt ({traits.prompt_tokens} tokens) exceeds the context window of every model it may use",
                reason="CONTEXT_TOO_LONG",
                metadata={"prompt_tokens": str(traits.prompt_tokens), "model": plan.chain[0].name},
            )
        if len(fitting) != len(plan.chain):
            plan = dataclasses.replace(plan, chain=fitting)  # models too small for the prompt are skipped
        state = _Stream(
            started,
            plan,
            rendered,
            context,
            report_prompt_sent=isinstance(request, inference_service_pb2.StreamCompleteRequest)
            and request.report_prompt_sent,
        )
        generation = self._generation(request, access.max_tokens_per_request)

        mode = request.cache_mode or cache_pb2.CACHE_MODE_READ_WRITE
        key: CacheKey | None = None
        if self.cache is not None and mode != cache_pb2.CACHE_MODE_DISABLED:
            key = _cache_key(principal, plan, rendered, generation, conversation, context)
            state.cache_miss = cache_pb2.CACHE_OUTCOME_MISS
        if key is not None and self.cache is not None and mode == cache_pb2.CACHE_MODE_READ_WRITE:
            hit = await self._lookup(key, question)
            if hit is not None:
                async for message in self._serve_hit(state, hit):
                    yield message
                return

        finish: int = generation_pb2.FINISH_REASON_UNSPECIFIED
        answered: ModelConfig | None = None
        try:
            # A provider's burst of buffered chunks goes out in as few messages as the send keeps up with; a
            # cached answer (above) is in memory and cut into its own pieces, and a reader task ahead of it only
            # cost each hit about half a millisecond of hand-offs (measured by bench/inference_overhead.py).
            async with contextlib.aclosing(
                # A PromptSent goes out before the first delta and counts as one more lead item.
                coalesced(self._run(state, generation), merge_deltas, lead=_LEAD + state.report_prompt_sent)
            ) as run:
                async for item in run:
                    if isinstance(item, Response):
                        yield item
                    else:
                        finish, answered = item
        except Unavailable as error:
            # Every provider failed before a token went out: a cached answer to a similar question (looser
            # threshold) is better than none. Only where the request lets the cache serve at all.
            fallback = (
                error.reason == "ALL_PROVIDERS_UNAVAILABLE"
                and state.first_token is None
                and key is not None
                and mode == cache_pb2.CACHE_MODE_READ_WRITE
            )
            hit = await self._fallback_lookup(key, question) if fallback and key is not None else None
            if hit is None:
                raise
            async for message in self._serve_hit(state, hit, fallback=True):
                yield message
            return
        assert answered is not None
        outcome = cache_pb2.CacheResult(outcome=state.cache_miss)
        if key is not None and _worth_storing(state, finish, answered):
            entry = NewEntry(
                question=question,
                answer="".join(state.text),
                finish_reason=finish,
                model=answered.name,
                provider=answered.provider,
                document_ids=sorted({c.document_id for c in context if c.document_id}),
                user_id=principal.subject,
                asked_at=started,
            )
            self._store_later(key, entry)
        yield Response(summary=self._summary(state, finish, answered, outcome))

    def _generation(self, request: Request, policy_cap: int) -> dict[str, object]:
        g = request.generation
        max_tokens = g.max_tokens if g.HasField("max_tokens") else None
        if policy_cap:
            max_tokens = min(max_tokens or policy_cap, policy_cap)
        return {
            "max_tokens": max_tokens,
            "temperature": round(g.temperature, 4) if g.HasField("temperature") else None,
            "top_p": round(g.top_p, 4) if g.HasField("top_p") else None,
            "stop": list(g.stop),
            "seed": g.seed if g.HasField("seed") else None,
        }

    async def _lookup(self, key: CacheKey, question: str) -> CachedAnswer | None:
        assert self.cache is not None
        try:
            hit = await self.cache.lookup(key, question)
        except Exception:
            # The cache is an optimisation: when it fails the model answers (counted as a miss: no hit).
            log.warning("semantic cache lookup failed; answering without it", exc_info=True)
            hit = None
        metrics.record_cache_lookup("semantic", hit is not None)
        return hit

    async def _fallback_lookup(self, key: CacheKey, question: str) -> CachedAnswer | None:
        assert self.cache is not None
        try:
            hit = await self.cache.lookup(key, question, threshold=self.cache.fallback_threshold)
        except Exception:
            log.warning("semantic cache fallback lookup failed", exc_info=True)
            hit = None
        metrics.record_cache_lookup("fallback", hit is not None)
        return hit

    def _store_later(self, key: CacheKey, entry: NewEntry) -> None:
        """Write the entry after the summary went out: the caller never waits for the embedding or the insert."""
        cache = self.cache
        assert cache is not None

        async def store() -> None:
            try:
                await cache.store(key, entry)
            except Exception:
                log.warning("semantic cache store failed", exc_info=True)

        task = asyncio.create_task(store())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settle_writes(self, within: float) -> None:
        """Wait up to ``within`` seconds for the cache writes pending now (not for those started meanwhile,
        which on a busy replica never run out)."""
        pending = list(self._background)
        if pending:
            await asyncio.wait(pending, timeout=within)

    async def drain(self) -> None:
        """Wait for pending cache writes (shutdown, tests)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def _serve_hit(
        self, state: _Stream, hit: CachedAnswer, *, fallback: bool = False
    ) -> AsyncIterator[Response]:
        for piece in _split_for_stream(hit.answer):
            if state.first_token is None:
                state.first_token = time.monotonic()
            yield Response(text_delta=completion_pb2.TextDelta(text=piece))
        summary = completion_pb2.CompletionSummary(
            finish_reason=hit.finish_reason,  # type: ignore[arg-type]
            # Zero for a plain hit; after failed attempts (a fallback hit), whatever they consumed.
            usage=state.tally.usage(),
            cost=money_pb2.Money(
                currency_code=self.config.currency, amount_micros=to_micros(state.tally.cost)
            ),
            routing=routing_pb2.RoutingDecision(
                requested_model=state.plan.requested,
                model=hit.model,
                provider=hit.provider,
                reason=routing_pb2.ROUTING_REASON_CACHE,
                detail=_hit_detail(hit, fallback),
                fallback_attempts=state.attempts if fallback else (),
            ),
            cache=cache_pb2.CacheResult(
                outcome=_hit_outcome(hit, fallback),
                similarity=hit.similarity,
                entry_id=hit.entry_id,
            ),
            prompt_template=prompt_template_pb2.PromptTemplateRef(
                name=state.rendered.template.name, version=state.rendered.template.version
            ),
        )
        self._times(summary, state)
        yield Response(summary=summary)

    def _times(self, summary: completion_pb2.CompletionSummary, state: _Stream) -> None:
        now = time.monotonic()
        summary.duration.CopyFrom(_duration(now - state.started))
        if state.first_token is not None:
            summary.time_to_first_token.CopyFrom(_duration(state.first_token - state.started))

    def _summary(
        self, state: _Stream, finish: int, model: ModelConfig, cache: cache_pb2.CacheResult
    ) -> completion_pb2.CompletionSummary:
        first = state.plan.chain[0]
        reason = state.plan.reason if model.name == first.name else routing_pb2.ROUTING_REASON_FALLBACK
        summary = completion_pb2.CompletionSummary(
            finish_reason=finish,  # type: ignore[arg-type]
            usage=state.tally.usage(),
            cost=money_pb2.Money(
                currency_code=self.config.currency, amount_micros=to_micros(state.tally.cost)
            ),
            routing=routing_pb2.RoutingDecision(
                requested_model=state.plan.requested,
                model=model.name,
                provider=model.provider,
                reason=reason,  # type: ignore[arg-type]
                detail=state.plan.detail,
                fallback_attempts=state.attempts,
                canary=state.plan.canary,
            ),
            cache=cache,
            prompt_template=prompt_template_pb2.PromptTemplateRef(
                name=state.rendered.template.name, version=state.rendered.template.version
            ),
        )
        self._times(summary, state)
        return summary

    def _provider_request(
        self, model: ModelConfig, state: _Stream, generation: dict[str, object]
    ) -> ProviderRequest:
        max_tokens = generation["max_tokens"]
        cap = model.max_output_tokens
        # What the model refuses is left out (the configuration's drop_parameters); a fallback model keeps its own.
        sampling = {k: v for k, v in generation.items() if k not in model.drop_parameters}
        stop = sampling.get("stop", [])
        assert isinstance(stop, list)
        return ProviderRequest(
            model=model.wire_name,
            system=state.rendered.system,
            messages=state.rendered.messages,
            max_tokens=min(max_tokens, cap) if isinstance(max_tokens, int) else None,
            output_limit=cap,
            temperature=sampling.get("temperature"),  # type: ignore[arg-type]
            top_p=sampling.get("top_p"),  # type: ignore[arg-type]
            stop=tuple(stop),
            seed=sampling.get("seed"),  # type: ignore[arg-type]
            context=tuple((doc.title, doc.text) for doc in state.context),
        )

    def _attempt_span(self, model: ModelConfig, provider: Provider, request: ProviderRequest) -> trace.Span:
        return telemetry.start_model_call(
            "chat",
            provider.label,
            model.name,
            tracer=self._tracer,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
        )

    def _prompt_sent(self, model: ModelConfig, request: ProviderRequest) -> completion_pb2.PromptSent:
        encoding = tokens.encoding_for_model(model.wire_name)
        return completion_pb2.PromptSent(
            model=model.name,
            provider=model.provider,
            prompt_tokens=tokens.count_chat(request.chat(), encoding),
            token_encoding=encoding,
        )

    def _estimate(
        self, model: ModelConfig, request: ProviderRequest, text: str, prompt: Usage | None = None
    ) -> Usage:
        """What an attempt without the provider's final usage consumed: the output counted offline, and the
        prompt as the provider counted it when it said (``prompt``, a PromptCounted's), else counted offline."""
        encoding = tokens.encoding_for_model(model.wire_name)
        completion = tokens.count(text, encoding)
        if prompt is not None:
            return Usage(prompt.prompt_tokens, completion, prompt.cached_tokens)
        return Usage(tokens.count_chat(request.chat(), encoding), completion)

    async def _run(self, state: _Stream, generation: dict[str, object]) -> AsyncIterator[_Item]:
        deadline = deadline_var.get()
        last_error: ProviderError | None = None
        trial_waits: list[float] = []  # of the models skipped for an open breaker: seconds until a trial
        for model in state.plan.chain:
            provider = self.providers[model.provider]
            breaker = self.breakers.get(model.provider, model.name)
            timeouts = self.config.timeouts_for(model.provider)
            request = self._provider_request(model, state, generation)
            # Counted once per model (the prompt is the same on every retry), announced before each attempt.
            announcement = self._prompt_sent(model, request) if state.report_prompt_sent else None
            retry_number = 0
            while True:
                permit = breaker.allow()
                if permit is None:
                    trial_waits.append(breaker.trial_in())
                    state.attempts.append(
                        routing_pb2.FallbackAttempt(
                            model=model.name, provider=model.provider, reason="CIRCUIT_OPEN"
                        )
                    )
                    break
                received: list[str] = []
                # The provider's own count of this attempt's prompt, if it gave one before its end.
                prompt_counted: Usage | None = None
                clock = AttemptClock(model, self._attempt_span(model, provider, request))
                try:
                    # Inside the try: a caller leaving while the announcement is sent must release the permit
                    # (outside, a half-open trial's slot stayed taken for ever and the model was never retried).
                    if announcement is not None:
                        yield Response(prompt_sent=announcement)
                    async for event in timed_events(provider.stream(request), timeouts, deadline):
                        if isinstance(event, Delta):
                            clock.token()
                            if state.first_token is None:
                                state.first_token = time.monotonic()
                            # A NUL could be stored nowhere downstream (the cache, the audit trail).
                            text = replace_nul(event.text)
                            received.append(text)
                            state.text.append(text)
                            yield Response(text_delta=completion_pb2.TextDelta(text=text))
                        elif isinstance(event, PromptCounted):
                            prompt_counted = event.usage
                        elif isinstance(event, Finish):
                            breaker.record(permit, True)
                            usage = event.usage or self._estimate(
                                model, request, "".join(received), prompt_counted
                            )
                            clock.done(usage=usage, finish_reason=event.reason)
                            state.tally.add(model, usage, estimated=event.usage is None)
                            yield (_FINISH[event.reason], model)
                            return
                    raise ProviderError("interrupted", "the provider ended without a finish")
                except ProviderError as error:
                    clock.done(error_type(error))
                    breaker.record(permit, error.kind == "rejected")
                    last_error = error
                    if error.kind == "interrupted" or received:
                        # The provider took the prompt and produced something: that is consumed usage (the
                        # provider's own count of the prompt beats ours; the output is counted).
                        state.tally.add(
                            model, self._estimate(model, request, "".join(received), prompt_counted), True
                        )
                    if state.first_token is not None:
                        yield Response(summary=self._interrupted(state, model))
                        raise Unavailable(
                            "the model's answer broke off; the summary has the usage so far",
                            reason="STREAM_INTERRUPTED",
                            metadata={"model": model.name, "provider": model.provider, "cause": error.reason},
                        ) from None
                    if error.kind == "rejected":
                        raise InvalidArgument(
                            f"the provider refused the request as invalid ({error.message})",
                            reason="PROVIDER_REJECTED",
                            metadata={"model": model.name, "provider": model.provider},
                        ) from None
                    remaining = None if deadline is None else deadline - time.monotonic()
                    retry_number += 1
                    delay = (
                        next_delay(self.config.retry, retry_number, error.retry_after, remaining)
                        # An open breaker (this failure, or other calls', opened it) would refuse the retry
                        # after the wait: the next model answers now, and the attempt keeps its own reason.
                        if error.retryable and breaker.state != "open"
                        else None
                    )
                    log.info(
                        "provider attempt failed",
                        extra={
                            "model": model.name,
                            "provider": model.provider,
                            "reason": error.reason,
                            "retry_in": delay,
                        },
                    )
                    if delay is None:
                        state.attempts.append(
                            routing_pb2.FallbackAttempt(
                                model=model.name, provider=model.provider, reason=error.reason
                            )
                        )
                        break
                    await asyncio.sleep(delay)
                except DeadlineExceeded:
                    clock.done("timeout")  # the caller's deadline came before the model's answer
                    breaker.release(permit)
                    if state.first_token is not None:
                        # The answer had begun: as for any failure after the first token, the summary (usage so
                        # far, FINISH_REASON_ERROR) goes out before the status, within the margin kept for it
                        # (attempt.DEADLINE_MARGIN_SECONDS). Without it the caller could not bill the tokens.
                        state.tally.add(
                            model, self._estimate(model, request, "".join(received), prompt_counted), True
                        )
                        yield Response(summary=self._interrupted(state, model))
                    raise
                except BaseException:
                    clock.abandoned()
                    breaker.release(permit)
                    raise
        retry_after = last_error.retry_after if last_error is not None and last_error.retry_after else 1.0
        if last_error is None and trial_waits:
            # No provider was called: every model's breaker is open (or its half-open trials are taken). Until
            # the first of them lets a trial through, a retry is refused the same way; 1 s said otherwise.
            retry_after = max(min(trial_waits), 1.0)
        raise Unavailable(
            "no model of the route could answer",
            reason="ALL_PROVIDERS_UNAVAILABLE",
            retry_after=retry_after,
            metadata={
                "attempts": ",".join(f"{a.model}:{a.reason}" for a in state.attempts),
                "route": state.plan.entry,
            },
        )

    def _interrupted(self, state: _Stream, model: ModelConfig) -> completion_pb2.CompletionSummary:
        return self._summary(
            state,
            generation_pb2.FINISH_REASON_ERROR,
            model,
            cache_pb2.CacheResult(outcome=state.cache_miss),
        )


def merge_deltas(items: list[_Item]) -> list[_Item]:
    """Neighbouring text deltas as one delta, in order; anything else (a summary, the finish) stays apart."""
    merged: list[_Item] = []
    texts: list[str] = []
    for item in items:
        if isinstance(item, Response) and item.HasField("text_delta"):
            texts.append(item.text_delta.text)
            continue
        if texts:
            merged.append(Response(text_delta=completion_pb2.TextDelta(text="".join(texts))))
            texts = []
        merged.append(item)
    if texts:
        merged.append(Response(text_delta=completion_pb2.TextDelta(text="".join(texts))))
    return merged
