"""What a set-aside copy keeps within NATS's message limit (services/audit/set_aside.py; the copy at the real limit
of a real NATS is tests/integration/audit/test_audit_set_aside_limit.py)."""

from __future__ import annotations

import hashlib

import pytest

from parapet.events.audit import (
    REJECTED_FROM_HEADER,
    REJECTED_PAYLOAD_HEADER,
    REJECTED_REASON_HEADER,
    REJECTED_TRIMMED_HEADER,
)
from parapet.kit.bus import message_size
from services.audit.set_aside import Copy, fit_copy

LIMIT = 4096
FROM = "parapet.audit.v1.t-abcdefabcdef"
MSG_ID = "audit-12-1765100000123456"
ORIGINAL = {"content-type": "application/protobuf", "ce-id": "0" * 36, "ce-source": "/parapet/gateway"}


def _copy(payload: bytes, reason: str = "not an AuditRecord", original: dict[str, str] | None = None) -> Copy:
    return fit_copy(
        payload,
        ORIGINAL if original is None else original,
        reason=reason,
        from_subject=FROM,
        msg_id=MSG_ID,
        limit=LIMIT,
    )


def test_a_copy_that_fits_keeps_everything() -> None:
    copy = _copy(b"x" * 100)
    assert copy.payload == b"x" * 100 and copy.msg_id == MSG_ID and copy.payload_kept
    assert copy.headers == ORIGINAL | {
        REJECTED_FROM_HEADER: FROM,
        REJECTED_REASON_HEADER: "not an AuditRecord",
    }
    assert copy.left_off == ()


@pytest.mark.parametrize("size", range(LIMIT - 700, LIMIT + 1, 7))
def test_every_payload_up_to_the_limit_is_kept_whole_within_it(size: int) -> None:
    """Near the limit the original headers go first, then the reason is cut, then the subject, then the id."""
    reason = "the database refuses it: «" + "é" * 200 + "»"  # a cut may fall inside a character
    copy = _copy(b"x" * size, reason)
    assert copy.payload == b"x" * size and copy.payload_kept
    assert message_size(copy.payload, copy.headers, copy.msg_id) <= LIMIT
    reason_kept = copy.headers.get(REJECTED_REASON_HEADER, "")
    assert reason[:300].startswith(reason_kept)
    if copy.left_off and REJECTED_TRIMMED_HEADER in copy.headers:
        assert copy.headers[REJECTED_TRIMMED_HEADER] == ", ".join(copy.left_off)
    if REJECTED_REASON_HEADER in copy.left_off:  # cut only once every original header is gone
        assert not set(ORIGINAL) & set(copy.headers)


def test_the_reason_is_cut_before_the_subject_and_the_message_id() -> None:
    reason = "r" * 300
    room = LIMIT - message_size(b"", {REJECTED_FROM_HEADER: FROM, REJECTED_REASON_HEADER: reason}, MSG_ID)
    copy = _copy(b"x" * (room + 100), reason)
    assert copy.msg_id == MSG_ID and copy.headers[REJECTED_FROM_HEADER] == FROM
    assert copy.headers[REJECTED_REASON_HEADER] == "r" * len(copy.headers[REJECTED_REASON_HEADER])
    assert 0 < len(copy.headers[REJECTED_REASON_HEADER]) < 300
    assert copy.left_off[0] == REJECTED_REASON_HEADER and set(copy.left_off[1:]) == set(ORIGINAL)


def test_a_payload_of_the_whole_limit_goes_without_any_header() -> None:
    copy = _copy(b"x" * LIMIT)
    assert (copy.payload, copy.headers, copy.msg_id) == (b"x" * LIMIT, {}, None)
    assert copy.left_off[:3] == ("Nats-Msg-Id", REJECTED_FROM_HEADER, REJECTED_REASON_HEADER)


def test_a_payload_over_the_limit_is_replaced_by_its_hash_and_said_so() -> None:
    """Only when the server's limit was lowered after it took the message: the loss is explicit."""
    payload = b"x" * (LIMIT + 1)
    copy = _copy(payload)
    assert copy.payload == b"" and not copy.payload_kept
    assert (
        copy.headers[REJECTED_PAYLOAD_HEADER]
        == f"omitted, {LIMIT + 1} bytes, sha256 {hashlib.sha256(payload).hexdigest()}"
    )
    assert copy.headers[REJECTED_REASON_HEADER] == "not an AuditRecord" and copy.msg_id == MSG_ID


def test_headers_of_the_original_cannot_pose_as_ours() -> None:
    copy = _copy(
        b"x", original={REJECTED_REASON_HEADER: "forged", REJECTED_TRIMMED_HEADER: "forged", "ce-id": "1"}
    )
    assert copy.headers == {
        "ce-id": "1",
        REJECTED_FROM_HEADER: FROM,
        REJECTED_REASON_HEADER: "not an AuditRecord",
    }
