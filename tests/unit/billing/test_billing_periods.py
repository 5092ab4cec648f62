"""Billing periods: invoice bounds must be UTC day starts; rollup filters round up to whole days."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from google.protobuf import timestamp_pb2

from parapet.kit.errors import InvalidArgument
from services.billing.servicer import _day, _first_day_from


def _stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def test_invoice_bounds_must_be_midnight_utc() -> None:
    assert _day(_stamp(datetime(2026, 11, 1, tzinfo=UTC)), "start_time") == date(2026, 11, 1)
    with pytest.raises(InvalidArgument) as raised:
        _day(_stamp(datetime(2026, 11, 1, 0, 0, 1, tzinfo=UTC)), "start_time")
    assert raised.value.reason == "PERIOD_INVALID"


def test_rollup_filters_take_days_starting_at_or_after_a_time() -> None:
    assert _first_day_from(_stamp(datetime(2026, 11, 1, tzinfo=UTC)), "start_time") == date(2026, 11, 1)
    assert _first_day_from(_stamp(datetime(2026, 11, 1, 12, tzinfo=UTC)), "start_time") == date(2026, 11, 2)
    assert _first_day_from(_stamp(datetime(9999, 12, 31, tzinfo=UTC)), "end_time") == date(9999, 12, 31)
    with pytest.raises(InvalidArgument) as late:  # no day starts after it: this overflowed into INTERNAL
        _first_day_from(_stamp(datetime(9999, 12, 31, 0, 0, 1, tzinfo=UTC)), "end_time")
    assert "end_time" in str(late.value)


def test_a_nanosecond_past_midnight_is_not_midnight() -> None:
    """datetime holds microseconds: a time 1 ns after midnight became midnight. An invoice period starting then was
    taken for the whole day, and a rollup filter included the day that starts before start_time (or left out the
    day that starts before end_time)."""
    late = _stamp(datetime(2026, 11, 1, tzinfo=UTC))
    late.nanos = 1
    with pytest.raises(InvalidArgument) as raised:
        _day(late, "start_time")
    assert raised.value.reason == "PERIOD_INVALID"
    assert _first_day_from(late, "start_time") == date(2026, 11, 2)
    last = _stamp(datetime(9999, 12, 31, tzinfo=UTC))
    last.nanos = 999
    with pytest.raises(InvalidArgument):  # no day starts after it
        _first_day_from(last, "end_time")
