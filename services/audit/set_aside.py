"""What a set-aside copy carries when the whole of it would not fit NATS's message limit.

The copy of a message set aside (``consumer.py``) is the message's payload with its headers, two headers of ours
(the reason, the subject it came on) and its own ``Nats-Msg-Id``. NATS counts payload and headers against its
``max_payload`` (``parapet.kit.bus.message_size``); nats-py checks the payload alone, and the server answers a
larger message by closing the connection, so a copy over the limit was never kept and cost the consumer its
connection on every redelivery.

The payload comes first: it is the record, what an operator republishes and what ``Erase`` reads the user from.
The original message fitted with its own headers, so its payload alone fits unless the server's limit was lowered
since; then the copy keeps a SHA-256 of it instead (``REJECTED_PAYLOAD_HEADER``), and the loss is logged and the record
counted as rejected. Headers follow in the order of what they are worth: the copy's message id (one copy however
often the message is delivered), the subject it came on, the reason (cut to what fits; the ERROR log has it whole),
then the original headers (CloudEvents attributes the record's own fields repeat, and nothing the audit service
reads), each whole or left off. ``REJECTED_TRIMMED_HEADER`` names what was left off or cut, when it fits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from parapet.events.audit import (
    REJECTED_FROM_HEADER,
    REJECTED_PAYLOAD_HEADER,
    REJECTED_REASON_HEADER,
    REJECTED_TRIMMED_HEADER,
)
from parapet.kit.bus import MSG_ID_HEADER, message_size

REASON_CHARACTERS = 300
_CUTTABLE = (REJECTED_FROM_HEADER, REJECTED_REASON_HEADER)
_OURS = frozenset({REJECTED_TRIMMED_HEADER, REJECTED_PAYLOAD_HEADER, *_CUTTABLE})


@dataclass(frozen=True)
class Copy:
    """A set-aside copy that fits: what to publish, and what of the message it lacks."""

    payload: bytes
    headers: dict[str, str]
    msg_id: str | None
    left_off: tuple[str, ...]  # header names left off or cut ("Nats-Msg-Id" included), in order of worth
    payload_kept: bool


def fit_copy(
    payload: bytes,
    original_headers: Mapping[str, str],
    *,
    reason: str,
    from_subject: str,
    msg_id: str,
    limit: int,
) -> Copy:
    """The copy of a message of ``payload`` and ``original_headers`` (``Nats-*`` ones already removed), set aside
    for ``reason`` from ``from_subject``, as large as NATS's ``limit`` lets it be."""
    ours = [(REJECTED_FROM_HEADER, from_subject), (REJECTED_REASON_HEADER, reason[:REASON_CHARACTERS])]
    theirs = [(name, value) for name, value in original_headers.items() if name not in _OURS]
    kept_payload, payload_kept = payload, True
    if len(payload) > limit:
        digest = hashlib.sha256(payload).hexdigest()
        kept_payload, payload_kept = b"", False
        ours.insert(0, (REJECTED_PAYLOAD_HEADER, f"omitted, {len(payload)} bytes, sha256 {digest}"))
    everything = dict(ours + theirs)
    if message_size(kept_payload, everything, msg_id) <= limit:
        return Copy(kept_payload, everything, msg_id, (), payload_kept)
    return _greedy(kept_payload, ours, theirs, msg_id, limit, payload_kept)


def _greedy(
    payload: bytes,
    first: list[tuple[str, str]],
    then: list[tuple[str, str]],
    msg_id: str,
    limit: int,
    payload_kept: bool,
) -> Copy:
    """The message id, ``first``, the marker, then ``then``: each header whole, cut (ours only) or left off, within
    ``limit``. The marker's room is set apart before ``then`` for a marker naming all of it; when even that does not
    fit, ``then`` gets what is left and the copy goes unmarked."""
    chosen_id: str | None = msg_id if message_size(payload, {}, msg_id) <= limit else None
    left_off: list[str] = [] if chosen_id is not None else [MSG_ID_HEADER]
    kept: dict[str, str] = {}

    def add(name: str, value: str, within: int) -> None:
        fitted = _fitting(payload, kept, chosen_id, name, value, within)
        if fitted:
            kept[name] = fitted
        if fitted != value:
            left_off.append(name)

    for name, value in first:
        add(name, value, limit)
    widest = {REJECTED_TRIMMED_HEADER: ", ".join([*left_off, *(name for name, _ in then)])}
    marker_room = message_size(payload, kept | widest, chosen_id) - message_size(payload, kept, chosen_id)
    marked = message_size(payload, kept, chosen_id) + marker_room <= limit
    for name, value in then:
        add(name, value, limit - marker_room if marked else limit)
    if marked and left_off:
        kept[REJECTED_TRIMMED_HEADER] = ", ".join(left_off)
    return Copy(payload, kept, chosen_id, tuple(left_off), payload_kept)


def _fitting(
    payload: bytes, kept: dict[str, str], msg_id: str | None, name: str, value: str, limit: int
) -> str:
    """``value`` when the header fits beside ``kept``; else, for a header of ours, its longest prefix that does;
    else ""."""
    room = limit - message_size(payload, kept | {name: ""}, msg_id)
    encoded = value.encode()
    if room >= len(encoded):
        return value
    if room <= 0 or name not in _CUTTABLE:
        return ""
    # Cut at a byte count, dropping a character the cut split (a reason may quote any text).
    return encoded[:room].decode(errors="ignore")
