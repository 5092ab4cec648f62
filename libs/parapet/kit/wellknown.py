"""Protobuf's Timestamp and Duration read from a request, as the caller's fault when they are out of range.

A Timestamp holds years 1 to 9999 and nanos below a second; a Duration about ±10,000 years with nanos of
the seconds' sign. protobuf's own ``ToDatetime`` raises a bare ``ValueError`` outside that, which a servicer
would turn into INTERNAL, and ``ToTimedelta`` checks nothing short of an overflow. ``as_datetime`` and
``as_timedelta`` answer None for such values (for code that collects violations); ``moment`` and ``span``
raise INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from parapet.kit.errors import InvalidArgument

_MAX_DURATION_SECONDS = 315_576_000_000  # 10,000 years, the contract of google.protobuf.Duration
_NANOS_PER_SECOND = 1_000_000_000


def as_datetime(stamp: timestamp_pb2.Timestamp) -> datetime | None:
    """``stamp`` as an aware UTC datetime, or None when no Timestamp may hold it."""
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        return None


def as_timedelta(duration: duration_pb2.Duration) -> timedelta | None:
    """``duration`` as a timedelta, or None when no Duration may hold it."""
    seconds, nanos = duration.seconds, duration.nanos
    if (
        abs(seconds) > _MAX_DURATION_SECONDS
        or abs(nanos) >= _NANOS_PER_SECOND
        or seconds > 0 > nanos
        or nanos > 0 > seconds
    ):
        return None
    return duration.ToTimedelta()


def moment(stamp: timestamp_pb2.Timestamp, field: str) -> datetime:
    """``stamp`` as an aware UTC datetime; INVALID_ARGUMENT naming ``field`` when no Timestamp may hold it."""
    value = as_datetime(stamp)
    if value is None:
        raise InvalidArgument(
            f"{field} is not a valid timestamp",
            field_violations=[(field, "outside 0001-01-01 to 9999-12-31, or nanos outside [0, 1e9)")],
        )
    return value


def span(duration: duration_pb2.Duration, field: str) -> timedelta:
    """``duration`` as a timedelta; INVALID_ARGUMENT naming ``field`` when no Duration may hold it."""
    value = as_timedelta(duration)
    if value is None:
        raise InvalidArgument(
            f"{field} is not a valid duration",
            field_violations=[
                (field, "outside ±10,000 years, or nanos outside (-1e9, 1e9) or of another sign")
            ],
        )
    return value
