"""records.fitted: an audit record too large to publish keeps its bodies as hashes; anything else is unchanged."""

from __future__ import annotations

import hashlib

from parapet.audit.v1 import audit_record_pb2, interaction_pb2
from parapet.auth.v1 import tenant_policy_pb2
from services.gateway.records import fitted

MASKED = tenant_policy_pb2.BODY_RETENTION_MASKED


def _record(
    prompt: str, response: str, retention: tenant_policy_pb2.BodyRetention.ValueType = MASKED
) -> audit_record_pb2.AuditRecord:
    body = interaction_pb2.InteractionBody(
        retention=retention, prompt=prompt, response=response, retention_days=9
    )
    return audit_record_pb2.AuditRecord(
        record_id="r1", tenant_id="t", interaction=interaction_pb2.Interaction(request_id="q", body=body)
    )


def test_a_record_within_the_limit_is_sent_as_it_is() -> None:
    record = _record("p" * 100, "r" * 100)
    assert fitted(record, record.ByteSize()) is record


def test_a_record_over_the_limit_keeps_its_bodies_as_hashes_and_everything_else() -> None:
    prompt, response = '[{"role": "ROLE_USER", "content": "\\u00e9"}]' * 1000, "é" * 5000
    record = _record(prompt, response)
    smaller = fitted(record, 1000)
    body = smaller.interaction.body
    assert (body.prompt, body.response) == ("", "")
    assert body.retention == tenant_policy_pb2.BODY_RETENTION_HASH_ONLY and body.retention_days == 9
    assert body.prompt_sha256 == hashlib.sha256(prompt.encode()).hexdigest()
    assert body.response_sha256 == hashlib.sha256(response.encode()).hexdigest()
    assert smaller.record_id == "r1" and smaller.interaction.request_id == "q"
    assert smaller.ByteSize() < 1000
    assert record.interaction.body.prompt == prompt  # the original is left alone


def test_a_large_record_without_bodies_is_not_changed() -> None:
    record = _record("", "", tenant_policy_pb2.BODY_RETENTION_NONE)
    assert fitted(record, 10) is record
