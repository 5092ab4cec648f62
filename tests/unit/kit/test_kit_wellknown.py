"""A request's Timestamp or Duration out of range is the caller's INVALID_ARGUMENT, naming the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from parapet.kit.errors import InvalidArgument
from parapet.kit.wellknown import as_datetime, as_timedelta, moment, span


def _field(error: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    (bad_request,) = error.value.details
    return [violation.field for violation in bad_request.field_violations]  # type: ignore[attr-defined]


def test_a_timestamp_in_range_is_an_aware_utc_datetime_and_one_outside_names_its_field() -> None:
    assert moment(timestamp_pb2.Timestamp(seconds=86400, nanos=5000), "start_time") == datetime(
        1970, 1, 2, 0, 0, 0, 5, tzinfo=UTC
    )
    assert moment(timestamp_pb2.Timestamp(seconds=253402300799), "t") == datetime(
        9999, 12, 31, 23, 59, 59, tzinfo=UTC
    )
    for seconds, nanos in ((-(2**63), 0), (253402300800, 0), (-62135596801, 0), (0, -1), (0, 10**9)):
        assert as_datetime(timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)) is None
        with pytest.raises(InvalidArgument) as refused:
            moment(timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos), "filter.start_time")
        assert _field(refused) == ["filter.start_time"]


def test_a_duration_outside_the_contract_names_its_field() -> None:
    assert span(duration_pb2.Duration(seconds=90, nanos=500_000_000), "ttl") == timedelta(seconds=90.5)
    assert span(duration_pb2.Duration(seconds=-1, nanos=-500_000_000), "ttl") == -timedelta(seconds=1.5)
    bad = ((-(2**63), 0), (315_576_000_001, 0), (0, 10**9), (1, -1), (-1, 1))
    for seconds, nanos in bad:
        assert as_timedelta(duration_pb2.Duration(seconds=seconds, nanos=nanos)) is None
        with pytest.raises(InvalidArgument) as refused:
            span(duration_pb2.Duration(seconds=seconds, nanos=nanos), "ttl")
        assert _field(refused) == ["ttl"]
