"""The canonical form, body policy and hashes of audit records, and the checkpoint key (no servers needed)."""

from __future__ import annotations

import hashlib
import struct
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from parapet.audit.v1 import audit_record_pb2, interaction_pb2
from parapet.auth.v1 import tenant_policy_pb2
from parapet.events.audit import MAX_BODY_RETENTION_DAYS, tenant_of
from parapet.kit.errors import InvalidArgument
from services.audit.access import has_audit_permission
from services.audit.canonical import (
    CHECKPOINT_DOMAIN,
    MAX_RECORD_BYTES,
    RECORD_DOMAIN,
    checkpoint_message,
    prepare,
    record_hash,
    sha256_hex,
)
from services.audit.settings import AuditSettings
from services.audit.signing import load_signer

PROMPT, RESPONSE = "hello", "world"


def _record(retention: int, **body: object) -> audit_record_pb2.AuditRecord:
    record = audit_record_pb2.AuditRecord(
        record_id=str(uuid.uuid4()),
        tenant_id="forged-tenant",
        interaction=interaction_pb2.Interaction(
            user_id="u",
            body=interaction_pb2.InteractionBody(
                retention=retention,  # type: ignore[arg-type]
                prompt=PROMPT,
                response=RESPONSE,
                **body,  # type: ignore[arg-type]
            ),
        ),
    )
    record.create_time.FromDatetime(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    record.chain.sequence = 99  # output only: never part of the canonical form
    return record


@pytest.mark.parametrize(
    ("mode", "keeps_bodies", "keeps_hashes"),
    [
        (tenant_policy_pb2.BODY_RETENTION_FULL, True, True),
        (tenant_policy_pb2.BODY_RETENTION_MASKED, True, True),
        (tenant_policy_pb2.BODY_RETENTION_HASH_ONLY, False, True),
        (tenant_policy_pb2.BODY_RETENTION_NONE, False, False),
    ],
)
def test_bodies_are_kept_as_the_policy_says(mode: int, keeps_bodies: bool, keeps_hashes: bool) -> None:
    prepared = prepare(_record(mode), "tenant-a", default_retention_days=7)
    assert (prepared.prompt, prepared.response) == ((PROMPT, RESPONSE) if keeps_bodies else (None, None))
    assert (prepared.body_expire_time is not None) == keeps_bodies
    metadata = audit_record_pb2.AuditRecord.FromString(prepared.metadata)
    body = metadata.interaction.body
    assert body.prompt == body.response == ""  # bodies are never in the chained metadata
    assert body.prompt_sha256 == (sha256_hex(PROMPT) if keeps_hashes else "")
    assert body.retention == mode and body.retention_days == 7
    assert metadata.tenant_id == "tenant-a"  # the verified tenant, never the producer's claim
    assert not metadata.HasField("chain")
    assert prepared.metadata_sha256 == hashlib.sha256(prepared.metadata).digest()


def test_unspecified_mode_takes_the_deployment_default() -> None:
    prepared = prepare(
        _record(tenant_policy_pb2.BODY_RETENTION_UNSPECIFIED),
        "t",
        default_mode=tenant_policy_pb2.BODY_RETENTION_HASH_ONLY,
    )
    assert prepared.prompt is None
    assert audit_record_pb2.AuditRecord.FromString(prepared.metadata).interaction.body.retention == (
        tenant_policy_pb2.BODY_RETENTION_HASH_ONLY
    )


def test_the_same_record_has_the_same_canonical_bytes() -> None:
    record = _record(tenant_policy_pb2.BODY_RETENTION_FULL)
    assert prepare(record, "t").metadata == prepare(record, "t").metadata


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: setattr(r, "record_id", "x"), "record.record_id"),
        (lambda r: r.ClearField("interaction"), "record.payload"),
        (lambda r: r.ClearField("create_time"), "record.create_time"),
        (
            lambda r: setattr(r.interaction.body, "prompt_sha256", "00" * 32),
            "record.interaction.body.prompt_sha256",
        ),
        # Out of range, these raised a bare ValueError or OverflowError, which stalled the audit stream.
        (lambda r: setattr(r.create_time, "seconds", -(2**63)), "record.create_time"),
        (lambda r: setattr(r.create_time, "seconds", 253402214400), "record.create_time"),  # 9999-12-31
        (
            lambda r: setattr(r.interaction.body, "retention_days", 2**31 - 1),
            "record.interaction.body.retention_days",
        ),
        (
            lambda r: setattr(r.interaction.body, "retention_days", -1),
            "record.interaction.body.retention_days",
        ),
        # Outside protobuf's Duration range these made Record INTERNAL (and ExportInteractions fail at the record);
        # negative figures were chained for ever.
        (lambda r: setattr(r.interaction.latency, "seconds", 2**60), "record.interaction.latency"),
        (lambda r: setattr(r.interaction.latency, "seconds", -1), "record.interaction.latency"),
        (
            lambda r: setattr(r.interaction.time_to_first_token, "nanos", -5),
            "record.interaction.time_to_first_token",
        ),
        (lambda r: setattr(r.interaction.request_time, "seconds", 2**60), "record.interaction.request_time"),
        (
            lambda r: setattr(r.interaction.usage, "prompt_tokens", -5),
            "record.interaction.usage.prompt_tokens",
        ),
        (
            lambda r: setattr(r.interaction.usage, "completion_tokens", -1),
            "record.interaction.usage.completion_tokens",
        ),
        (
            lambda r: setattr(r.interaction.usage, "cached_tokens", -1),
            "record.interaction.usage.cached_tokens",
        ),
        (lambda r: setattr(r.interaction.cost, "amount_micros", -1), "record.interaction.cost.amount_micros"),
        (
            lambda r: setattr(r.interaction, "retrieved_chunk_count", -1),
            "record.interaction.retrieved_chunk_count",
        ),
        (
            lambda r: r.interaction.moderation_findings.add(count=-2),
            "record.interaction.moderation_findings[0].count",
        ),
        # Read back, a record must fit one gRPC message (4 MiB by default).
        (lambda r: setattr(r.interaction.body, "prompt", "x" * MAX_RECORD_BYTES), "record is larger"),
    ],
)
def test_invalid_records_are_refused_with_the_field(change: object, field: str) -> None:
    record = _record(tenant_policy_pb2.BODY_RETENTION_FULL)
    change(record)  # type: ignore[operator]
    with pytest.raises(InvalidArgument) as raised:
        prepare(record, "t")
    assert raised.value.reason == "RECORD_INVALID"
    assert field in str(raised.value)


def test_zero_and_largest_valid_figures_are_accepted() -> None:
    record = _record(tenant_policy_pb2.BODY_RETENTION_FULL)
    record.interaction.latency.seconds = 315_576_000_000  # protobuf's largest Duration
    record.interaction.usage.prompt_tokens = 2**63 - 1
    record.interaction.moderation_findings.add(count=0)
    prepared = prepare(record, "t")
    assert prepared.columns["latency_us"] == 315_576_000_000 * 10**6
    assert prepared.columns["prompt_tokens"] == 2**63 - 1


def test_record_hash_and_checkpoint_message_layout() -> None:
    previous, metadata_hash = bytes(range(32)), bytes(32)
    assert (
        record_hash(7, previous, metadata_hash)
        == hashlib.sha256(RECORD_DOMAIN + (7).to_bytes(8, "big") + previous + metadata_hash).digest()
    )
    when = datetime(2026, 1, 1, tzinfo=UTC)
    message = checkpoint_message("acme", 5, previous, when)
    assert message == (
        CHECKPOINT_DOMAIN
        + b"\x00\x04acme"
        + struct.pack(">Q", 5)
        + previous
        + struct.pack(">q", 1767225600000000)
    )


def test_checkpoint_key_is_created_once_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "checkpoint.pem"
    signer = load_signer(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_signer(path)
    assert again.key_id == signer.key_id
    when = datetime.now(UTC)
    signature = signer.sign("acme", 3, bytes(32), when)
    assert again.verify("acme", 3, bytes(32), when, signature, signer.key_id)
    assert not again.verify("acme", 4, bytes(32), when, signature, signer.key_id)
    assert not again.verify("other", 3, bytes(32), when, signature, signer.key_id)
    assert not load_signer(tmp_path / "other.pem").verify(
        "acme", 3, bytes(32), when, signature, signer.key_id
    )


def test_subjects_name_valid_tenants_only() -> None:
    assert tenant_of("parapet.audit.v1.acme-1") == "acme-1"
    assert tenant_of("parapet.audit.v1.ACME") is None
    assert tenant_of("parapet.usage.v1.acme") is None


def test_audit_permissions_come_from_scopes_roles_or_admin() -> None:
    from parapet.kit.identity import Principal

    assert has_audit_permission(Principal("t", "s", scopes=("audit.read",)), "audit.read")
    assert has_audit_permission(Principal("t", "s", roles=("admin",)), "audit.erase")
    assert not has_audit_permission(Principal("t", "s", roles=("member",), scopes=("chat",)), "audit.read")
    assert has_audit_permission(Principal("t", "s", credential_type="service"), "audit.write")
    assert not has_audit_permission(Principal("t", "s", credential_type="service"), "audit.read")


def test_the_default_retention_is_held_to_the_bound_of_records() -> None:
    """The default stands in for a record's retention_days, so it has the record's bound. Until 2026-12-06 it had
    none: with a default of 100,000 days, a record created late enough (its own retention_days 0) overflowed its
    bodies' expiry date, OverflowError instead of RECORD_INVALID: Record failed INTERNAL, and on the stream its
    batch was redelivered for ever with every tenant's records behind it."""
    with pytest.raises(ValidationError):
        AuditSettings(audit_default_retention_days=MAX_BODY_RETENTION_DAYS + 1)
    days = AuditSettings(audit_default_retention_days=MAX_BODY_RETENTION_DAYS).audit_default_retention_days
    record = _record(tenant_policy_pb2.BODY_RETENTION_FULL)
    latest = datetime.max.replace(tzinfo=UTC) - timedelta(days=MAX_BODY_RETENTION_DAYS)
    record.create_time.FromDatetime(latest)
    prepared = prepare(record, "t", default_retention_days=days)
    assert prepared.body_expire_time == latest + timedelta(days=MAX_BODY_RETENTION_DAYS)
