"""Protobuf's Timestamp and Duration read from a request, as the caller's fault when they are out of range.

A Timestamp holds years 1 to 9999 and nanos below a second; a Duration about ±10,000 years. protobuf's own
``ToDatetime`` and ``ToTimedelta`` raise a bare ``ValueError`` (or ``OverflowError``) outside that, which a
servicer would turn into INTERNAL: these name the field in an INVALID_ARGUMENT instead.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from parapet.kit.errors import InvalidArgument


def moment(stamp: timestamp_pb2.Timestamp, field: str) -> datetime:
    """``stamp`` as an aware UTC datetime; INVALID_ARGUMENT naming ``field`` when no Timestamp may hold it."""
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(
            f"{field} is not a valid timestamp",
            field_violations=[(field, "outside 0001-01-01 to 9999-12-31, or nanos outside [0, 1e9)")],
        ) from None


_MAX_DURATION_SECONDS = 315_576_000_000  # 10,000 years, the contract of google.protobuf.Duration
_NANOS_PER_SECOND = 1_000_000_000


def span(duration: duration_pb2.Duration, field: str) -> timedelta:
    """``duration`` as a timedelta; INVALID_ARGUMENT naming ``field`` when no Duration may hold it.

    protobuf's ``ToTimedelta`` checks nothing below an overflow, so the Duration contract is checked here."""
    seconds, nanos = duration.seconds, duration.nanos
    valid = (
        abs(seconds) <= _MAX_DURATION_SECONDS
        and abs(nanos) < _NANOS_PER_SECOND
        and not (seconds > 0 > nanos or nanos > 0 > seconds)
    )
    if not valid:
        raise InvalidArgument(
            f"{field} is not a valid duration",
            field_violations=[
                (field, "outside ±10,000 years, or nanos outside (-1e9, 1e9) or of another sign")
            ],
        )
    return duration.ToTimedelta()
