"""The canonical form of a record and the hashes of the chain (specified byte for byte in docs/audit.md).

A record is split at ingest into its *metadata* (everything but the prompt and response texts, bodies'
hashes included) and its bodies. The metadata bytes are produced once, by deterministic protobuf
serialization, and stored as they are; verification hashes the stored bytes and never re-encodes, so the
chain does not depend on any protobuf runtime's encoder staying byte-stable. Bodies are outside the chain
(only their hashes are in), which is what lets retention and erasure drop them while the chain verifies.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from parapet.audit.v1 import admin_action_pb2, audit_record_pb2, interaction_pb2
from parapet.auth.v1 import tenant_policy_pb2
from parapet.events.audit import MAX_BODY_RETENTION_DAYS
from parapet.kit import wellknown
from parapet.kit.errors import InvalidArgument
from parapet.moderation.v1 import finding_pb2

ZERO_HASH = bytes(32)
RECORD_DOMAIN = b"parapet.audit.v1.record\x00"
CHECKPOINT_DOMAIN = b"parapet.audit.v1.checkpoint\x00"

BodyRetention = tenant_policy_pb2.BodyRetention
FULL = tenant_policy_pb2.BODY_RETENTION_FULL
MASKED = tenant_policy_pb2.BODY_RETENTION_MASKED
HASH_ONLY = tenant_policy_pb2.BODY_RETENTION_HASH_ONLY
NONE = tenant_policy_pb2.BODY_RETENTION_NONE

INTERACTION = "interaction"
ADMIN_ACTION = "admin_action"


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record_hash(sequence: int, previous_hash: bytes, metadata_sha256: bytes) -> bytes:
    """SHA-256(domain ‖ uint64be(sequence) ‖ previous_hash ‖ SHA-256(metadata))."""
    return hashlib.sha256(
        RECORD_DOMAIN + struct.pack(">Q", sequence) + previous_hash + metadata_sha256
    ).digest()


def checkpoint_message(tenant_id: str, sequence: int, head_hash: bytes, create_time: datetime) -> bytes:
    """The bytes a checkpoint signs: domain ‖ uint16be(len) ‖ tenant ‖ uint64be(seq) ‖ head ‖ int64be(µs)."""
    tenant = tenant_id.encode("utf-8")
    micros = round(create_time.timestamp() * 1_000_000)
    return (
        CHECKPOINT_DOMAIN
        + struct.pack(">H", len(tenant))
        + tenant
        + struct.pack(">Q", sequence)
        + head_hash
        + struct.pack(">q", micros)
    )


@dataclass(frozen=True)
class PreparedRecord:
    """A record ready to append: its canonical metadata, its bodies and its indexed columns."""

    record_id: str
    metadata: bytes
    metadata_sha256: bytes
    prompt: str | None
    response: str | None
    body_expire_time: datetime | None
    columns: dict[str, Any]
    erase_time: datetime | None = None  # set when its user's erasure came first (store._apply_erasures)


_LATEST_CREATE_TIME = datetime.max.replace(tzinfo=UTC) - timedelta(days=MAX_BODY_RETENTION_DAYS)
# A record, bodies included, is read back whole in one gRPC message (QueryInteractions), whose receivers take at
# most 4 MiB by default; what reading adds (chain link, hashes, erase time) is a few hundred bytes.
MAX_RECORD_BYTES = 3 << 20


#: The longest user id, request id or model of a record, in UTF-8 bytes. All three are indexed (records_tenant_user,
#: records_tenant_request, the erasures key; the model is INCLUDEd in records_tenant_time), and PostgreSQL refuses a
#: btree entry above 2,704 bytes when compression cannot shrink it: a longer random value failed Record with
#: INTERNAL, and on the stream failed the whole batch's transaction with an error that is no data exception, so the
#: batch came back for ever with every tenant's records behind it (the model until 2026-12-06).
MAX_ID_BYTES = 1024


def id_too_long(value: str) -> bool:
    return len(value.encode()) > MAX_ID_BYTES


def _invalid(field: str, problem: str) -> InvalidArgument:
    return InvalidArgument(
        f"invalid audit record: {field} {problem}",
        field_violations=[(field, problem)],
        reason="RECORD_INVALID",
    )


def _check_figures(item: interaction_pb2.Interaction) -> None:
    """Counts, costs and durations an interaction can really have. Durations outside protobuf's range cannot be
    turned into the indexed microseconds nor written as JSON (ExportInteractions), and a negative count or cost
    would be chained for ever and skew every sum over the log."""
    for name in ("latency", "time_to_first_token"):
        duration = getattr(item, name)
        if wellknown.as_timedelta(duration) is None or duration.seconds < 0 or duration.nanos < 0:
            raise _invalid(f"record.interaction.{name}", "must be a valid, non-negative duration")
    if item.HasField("request_time") and wellknown.as_datetime(item.request_time) is None:
        raise _invalid("record.interaction.request_time", "is not a valid timestamp")
    counts = {
        "usage.prompt_tokens": item.usage.prompt_tokens,
        "usage.completion_tokens": item.usage.completion_tokens,
        "usage.cached_tokens": item.usage.cached_tokens,
        "cost.amount_micros": item.cost.amount_micros,
        "retrieved_chunk_count": item.retrieved_chunk_count,
        **{f"moderation_findings[{i}].count": f.count for i, f in enumerate(item.moderation_findings)},
    }
    for name, value in counts.items():
        if value < 0:
            raise _invalid(f"record.interaction.{name}", "must not be negative")


def _check_ids(record: audit_record_pb2.AuditRecord) -> None:
    """The indexed values (user, request, model) are short enough to be indexed."""
    if record.WhichOneof("payload") == "interaction":
        ids = {
            "record.interaction.user_id": record.interaction.user_id,
            "record.interaction.request_id": record.interaction.request_id,
            "record.interaction.model": record.interaction.model,
        }
    else:
        ids = {
            "record.admin_action.actor.subject": record.admin_action.actor.subject,
            "record.admin_action.request_id": record.admin_action.request_id,
        }
    for name, value in ids.items():
        if id_too_long(value):
            raise _invalid(name, f"must be at most {MAX_ID_BYTES} bytes (UTF-8)")


def _apply_body_policy(
    record: audit_record_pb2.AuditRecord, default_mode: int, default_days: int
) -> tuple[str | None, str | None, int]:
    """Bodies kept per the policy mode; the record's body keeps only the hashes. Returns (prompt, response, days)."""
    body = record.interaction.body
    mode = body.retention or default_mode
    if body.prompt and body.prompt_sha256 and sha256_hex(body.prompt) != body.prompt_sha256.lower():
        raise _invalid("record.interaction.body.prompt_sha256", "does not match the prompt")
    if body.response and body.response_sha256 and sha256_hex(body.response) != body.response_sha256.lower():
        raise _invalid("record.interaction.body.response_sha256", "does not match the response")
    if not 0 <= body.retention_days <= MAX_BODY_RETENTION_DAYS:
        raise _invalid("record.interaction.body.retention_days", f"must be in [0, {MAX_BODY_RETENTION_DAYS}]")
    prompt_hash = sha256_hex(body.prompt) if body.prompt else body.prompt_sha256.lower()
    response_hash = sha256_hex(body.response) if body.response else body.response_sha256.lower()
    keep = mode in (FULL, MASKED)
    prompt = body.prompt if keep and body.prompt else None
    response = body.response if keep and body.response else None
    days = body.retention_days or default_days
    body.Clear()
    body.retention = tenant_policy_pb2.BodyRetention.ValueType(mode)
    body.retention_days = days
    if mode != NONE:
        body.prompt_sha256 = prompt_hash
        body.response_sha256 = response_hash
    return prompt, response, days


def prepare(
    record: audit_record_pb2.AuditRecord,
    tenant_id: str,
    *,
    default_mode: int = MASKED,
    default_retention_days: int = 30,
    owned: bool = False,
) -> PreparedRecord:
    """Validate ``record`` for ``tenant_id`` and split it into canonical metadata and bodies.

    ``owned``: the caller hands ``record`` over (e.g. just decoded from a message), so it is reshaped in
    place instead of copied. Raises InvalidArgument (reason RECORD_INVALID) with field violations.
    """
    if record.ByteSize() > MAX_RECORD_BYTES:
        raise _invalid("record", f"is larger than {MAX_RECORD_BYTES} bytes encoded")
    try:
        record_id = str(uuid.UUID(record.record_id))
    except ValueError:
        raise _invalid("record.record_id", "must be a UUID") from None
    payload = record.WhichOneof("payload")
    if payload is None:
        raise _invalid("record.payload", "must be an interaction or an admin_action")
    if not record.HasField("create_time"):
        raise _invalid("record.create_time", "is required")
    if owned:
        canonical = record
    else:
        canonical = audit_record_pb2.AuditRecord()
        canonical.CopyFrom(record)
    canonical.ClearField("chain")
    canonical.record_id = record_id
    canonical.tenant_id = tenant_id
    prompt = response = None
    expire: datetime | None = None
    create_time = wellknown.as_datetime(canonical.create_time)
    if create_time is None:
        raise _invalid("record.create_time", "is not a valid timestamp")
    if create_time > _LATEST_CREATE_TIME:  # its bodies' expiry date would overflow a datetime
        raise _invalid("record.create_time", "is too far in the future")
    _check_ids(canonical)
    if payload == "interaction":
        _check_figures(canonical.interaction)
        prompt, response, days = _apply_body_policy(canonical, default_mode, default_retention_days)
        if prompt is not None or response is not None:
            expire = create_time + timedelta(days=days)
    metadata = canonical.SerializeToString(deterministic=True)
    return PreparedRecord(
        record_id=record_id,
        metadata=metadata,
        metadata_sha256=hashlib.sha256(metadata).digest(),
        prompt=prompt,
        response=response,
        body_expire_time=expire,
        columns=index_columns(canonical, create_time),
    )


_CATEGORY = finding_pb2.FindingCount.DESCRIPTOR.fields_by_name["category"].enum_type
_ACTION = finding_pb2.FindingCount.DESCRIPTOR.fields_by_name["action"].enum_type


def _enum_name(enum: Any, number: int) -> str:
    value = enum.values_by_number.get(number)
    return value.name if value is not None else str(number)  # a value newer than this service


def _enum_number(enum: Any, token: str) -> int | str:
    """The number a summary key's ``token`` stands for: a name this release knows, or the number an older release
    wrote for a value it did not know; anything else as it is (it matches no derived key)."""
    value = enum.values_by_name.get(token)
    if value is not None:
        return int(value.number)
    return int(token) if token.isascii() and token.isdigit() and len(token) <= 10 else token


def moderation_counts(summary: Any) -> dict[tuple[int | str, int | str], int] | None:
    """``summary`` (a ``moderation_summary`` column) keyed by (category, action) numbers; None when it is no such
    summary (the column was edited). The column names the values the writing release knew and numbers the others,
    so the same metadata gives other keys once a release learns a name: compared so, a summary verifies whichever
    release wrote it, and a count that differs still does not."""
    if not isinstance(summary, Mapping):
        return None
    counts: dict[tuple[int | str, int | str], int] = {}
    for key, count in summary.items():
        if not isinstance(key, str) or not isinstance(count, int) or isinstance(count, bool):
            return None
        category, _, action = key.partition(":")
        number = (_enum_number(_CATEGORY, category), _enum_number(_ACTION, action))
        counts[number] = counts.get(number, 0) + count
    return counts


def _micros(duration: Any) -> int:
    return int(duration.seconds) * 1_000_000 + int(duration.nanos) // 1000


def index_columns(
    record: audit_record_pb2.AuditRecord, create_time: datetime | None = None
) -> dict[str, Any]:
    """The queryable columns, derived only from the metadata (verification re-derives and compares them)."""
    if create_time is None:
        create_time = record.create_time.ToDatetime(tzinfo=UTC)
    if record.WhichOneof("payload") == "admin_action":
        action = record.admin_action
        return {
            "kind": ADMIN_ACTION,
            "create_time": create_time,
            "user_id": action.actor.subject,
            "api_key_id": action.actor.api_key_id,
            "feature": "",
            "requested_model": "",
            "model": "",
            "provider": "",
            "prompt_template": "",
            "prompt_template_version": "",
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cached_tokens": 0,
            "cost_micros": 0,
            "currency_code": "",
            "latency_us": 0,
            "time_to_first_token_us": 0,
            "cached": False,
            "fallback_models": [],
            "moderation_summary": {},
            "status_code": action.status_code,
            "error_reason": action.error_reason,
            "request_id": action.request_id,
            "trace_id": "",
        }
    item = record.interaction
    summary: dict[str, int] = {}
    for finding in item.moderation_findings:
        key = f"{_enum_name(_CATEGORY, finding.category)}:{_enum_name(_ACTION, finding.action)}"
        summary[key] = summary.get(key, 0) + finding.count
    return {
        "kind": INTERACTION,
        "create_time": create_time,
        "user_id": item.user_id,
        "api_key_id": item.api_key_id,
        "feature": item.feature,
        "requested_model": item.requested_model,
        "model": item.model,
        "provider": item.provider,
        "prompt_template": item.prompt_template.name,
        "prompt_template_version": item.prompt_template.version,
        "prompt_tokens": item.usage.prompt_tokens,
        "completion_tokens": item.usage.completion_tokens,
        "cached_tokens": item.usage.cached_tokens,
        "cost_micros": item.cost.amount_micros,
        "currency_code": item.cost.currency_code,
        "latency_us": _micros(item.latency),
        "time_to_first_token_us": _micros(item.time_to_first_token),
        "cached": item.cached,
        "fallback_models": list(item.fallback_models),
        "moderation_summary": summary,
        "status_code": item.status_code,
        "error_reason": item.error_reason,
        "request_id": item.request_id,
        "trace_id": item.trace_id,
    }


COLUMN_NAMES: tuple[str, ...] = tuple(
    index_columns(audit_record_pb2.AuditRecord(admin_action=admin_action_pb2.AdminAction())).keys()
)
