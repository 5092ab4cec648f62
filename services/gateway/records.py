"""What a finished chat leaves behind: the settlement of its usage and its audit record.

Built from the run's facts only (the flow's :class:`Outcome`), so the figures in metering's ledger, in the
usage event billing rolls up and in the audit log are the ones the caller's summary showed.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from dataclasses import dataclass, field

from google.protobuf import duration_pb2, timestamp_pb2

from parapet.audit.v1 import audit_record_pb2, interaction_pb2
from parapet.auth.v1 import tenant_policy_pb2
from parapet.inference.v1 import cache_pb2, completion_pb2, generation_pb2, message_pb2, prompt_template_pb2
from parapet.metering.v1 import metering_service_pb2
from parapet.moderation.v1 import category_pb2, finding_pb2
from parapet.usage.v1 import money_pb2, token_usage_pb2
from services.gateway.caller import Caller


@dataclass
class Outcome:
    """Everything the finaliser needs about one chat, filled in as the flow runs."""

    caller: Caller
    request_id: str
    request_time: timestamp_pb2.Timestamp
    feature: str
    requested_model: str
    labels: dict[str, str]
    retention: tenant_policy_pb2.RetentionPolicy
    trace_id: str = ""
    reservation_id: str = ""
    # Whether a model call was made (or attempted): without one a reservation is released, not settled.
    inference_started: bool = False
    # A model call started beside the budget hold was cancelled before the hold was granted (refused, failed,
    # or the caller left): the provider saw the screened prompt, so the audit record names the model, but
    # nothing reached the caller and nothing is billed (services/gateway/headroom.py).
    speculation_unanswered: bool = False
    summary: completion_pb2.CompletionSummary | None = None
    # Estimated usage when inference's summary never came (cancelled, blocked, broken stream).
    estimated_usage: token_usage_pb2.TokenUsage | None = None
    estimated_cost: money_pb2.Money | None = None
    # The model and provider that usage is charged to (the one priced), when no summary named them.
    estimated_model: str = ""
    estimated_provider: str = ""
    finish_reason: int = generation_pb2.FINISH_REASON_UNSPECIFIED
    status_code: int = 0
    error_reason: str = ""
    findings: Counter[tuple[int, int]] = field(default_factory=Counter)
    document_ids: list[str] = field(default_factory=list)
    chunk_count: int = 0
    prompt_raw: list[message_pb2.Message] = field(default_factory=list)
    prompt_sent: list[str] = field(default_factory=list)
    response_sent: list[str] = field(default_factory=list)  # as the caller received it
    response_received: list[str] = field(default_factory=list)  # as inference sent it (pieces may be merged)
    duration: float = 0.0
    time_to_first_token: float | None = None

    def usage(self) -> token_usage_pb2.TokenUsage:
        if self.summary is not None:
            return self.summary.usage
        return self.estimated_usage or token_usage_pb2.TokenUsage()

    def cost(self) -> money_pb2.Money:
        if self.summary is not None:
            return self.summary.cost
        return self.estimated_cost or money_pb2.Money()

    def model(self) -> str:
        if self.summary is not None and self.summary.routing.model:
            return self.summary.routing.model
        return self.estimated_model or self.requested_model

    def provider(self) -> str:
        if self.summary is not None and self.summary.routing.model:
            return self.summary.routing.provider
        return self.estimated_provider

    @property
    def cached(self) -> bool:
        outcome = self.summary.cache.outcome if self.summary is not None else 0
        return outcome in (
            cache_pb2.CACHE_OUTCOME_EXACT_HIT,
            cache_pb2.CACHE_OUTCOME_SEMANTIC_HIT,
            cache_pb2.CACHE_OUTCOME_FALLBACK_HIT,
        )


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def settle_request(outcome: Outcome) -> metering_service_pb2.SettleRequest:
    complete = timestamp_pb2.Timestamp()
    complete.GetCurrentTime()
    return metering_service_pb2.SettleRequest(
        reservation_id=outcome.reservation_id,
        request_id=outcome.request_id,
        feature=outcome.feature,
        model=outcome.model(),
        provider=outcome.provider(),
        requested_model=outcome.requested_model,
        usage=outcome.usage(),
        cost=outcome.cost(),
        cached=outcome.cached,
        latency=_duration(outcome.duration),
        complete_time=complete,
        labels=outcome.labels,
    )


def _body(outcome: Outcome) -> interaction_pb2.InteractionBody:
    mode = outcome.retention.body_retention or tenant_policy_pb2.BODY_RETENTION_MASKED
    body = interaction_pb2.InteractionBody(
        retention=mode, retention_days=outcome.retention.body_retention_days
    )
    if mode == tenant_policy_pb2.BODY_RETENTION_NONE:
        return body
    if mode == tenant_policy_pb2.BODY_RETENTION_FULL:
        prompt = json.dumps(
            [{"role": message_pb2.Role.Name(m.role), "content": m.content} for m in outcome.prompt_raw]
        )
        response = "".join(outcome.response_sent)
    else:  # masked: as the provider saw it
        prompt = json.dumps(
            [
                {"role": message_pb2.Role.Name(m.role), "content": text}
                for m, text in zip(outcome.prompt_raw, outcome.prompt_sent, strict=False)
            ]
        )
        response = "".join(outcome.response_received)
    if mode == tenant_policy_pb2.BODY_RETENTION_HASH_ONLY:
        body.prompt_sha256 = hashlib.sha256(prompt.encode()).hexdigest()
        body.response_sha256 = hashlib.sha256(response.encode()).hexdigest()
    else:
        body.prompt, body.response = prompt, response
    return body


def audit_record(outcome: Outcome) -> audit_record_pb2.AuditRecord:
    p = outcome.caller.principal
    summary = outcome.summary
    interaction = interaction_pb2.Interaction(
        request_id=outcome.request_id,
        trace_id=outcome.trace_id,
        user_id=p.subject,
        api_key_id=p.api_key_id,
        feature=outcome.feature,
        requested_model=outcome.requested_model,
        usage=outcome.usage(),
        cost=outcome.cost(),
        cached=outcome.cached,
        latency=_duration(outcome.duration),
        finish_reason=generation_pb2.FinishReason.ValueType(outcome.finish_reason),
        status_code=outcome.status_code,
        error_reason=outcome.error_reason,
        policy_version=outcome.caller.policy_version,
        retrieved_chunk_count=outcome.chunk_count,
        document_ids=sorted(set(outcome.document_ids)),
        body=_body(outcome),
        request_time=outcome.request_time,
        moderation_findings=[
            finding_pb2.FindingCount(
                category=category_pb2.Category.ValueType(category),
                action=category_pb2.Action.ValueType(action),
                count=count,
            )
            for (category, action), count in sorted(outcome.findings.items())
        ],
    )
    if outcome.time_to_first_token is not None:
        interaction.time_to_first_token.CopyFrom(_duration(outcome.time_to_first_token))
    if outcome.inference_started:  # a request refused before any model call names no model
        interaction.model, interaction.provider = outcome.model(), outcome.provider()
    if summary is not None:
        interaction.fallback_models.extend(a.model for a in summary.routing.fallback_attempts)
        interaction.prompt_template.CopyFrom(
            summary.prompt_template or prompt_template_pb2.PromptTemplateRef()
        )
    record = audit_record_pb2.AuditRecord(
        record_id=str(uuid.uuid4()), tenant_id=p.tenant_id, interaction=interaction
    )
    record.create_time.GetCurrentTime()
    return record


def fitted(record: audit_record_pb2.AuditRecord, max_bytes: int) -> audit_record_pb2.AuditRecord:
    """``record``, or when it is larger than ``max_bytes`` encoded, a copy whose interaction keeps its bodies as
    their SHA-256 only, as the HASH_ONLY policy keeps them. A chat may be 200,000 characters each way, and the
    prompt is stored as JSON, which escapes a non-ASCII character to six bytes (twelve outside the BMP): such a
    record exceeded NATS's message limit (1 MB by default), its publish failed every time, and the outbox relay
    retried it for ever, so the chat was never audited. Its bodies would not fit the audit service's own limit
    (3 MiB) much later either. The hashes still let anyone holding the text prove what was sent."""
    if record.ByteSize() <= max_bytes or not record.HasField("interaction"):
        return record
    body = record.interaction.body
    if body.retention == tenant_policy_pb2.BODY_RETENTION_NONE or not (body.prompt or body.response):
        return record
    smaller = audit_record_pb2.AuditRecord()
    smaller.CopyFrom(record)
    kept = smaller.interaction.body
    kept.retention = tenant_policy_pb2.BODY_RETENTION_HASH_ONLY
    kept.prompt_sha256 = hashlib.sha256(body.prompt.encode()).hexdigest()
    kept.response_sha256 = hashlib.sha256(body.response.encode()).hexdigest()
    kept.ClearField("prompt")
    kept.ClearField("response")
    return smaller
