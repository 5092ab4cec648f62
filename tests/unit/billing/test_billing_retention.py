"""How long billing keeps processed event ids for the USAGE stream's max age as it is now (the operator's)."""

from __future__ import annotations

from datetime import timedelta

from services.billing.pruning import keep_for

DAY = 86400.0
RETENTION = timedelta(days=9)  # the default: the declared 7 days of the stream, 1 of replays, 1 of margin


def test_a_stream_kept_longer_than_declared_keeps_the_ids_longer_by_as_much() -> None:
    assert keep_for(RETENTION, 7 * DAY) == RETENTION
    assert keep_for(RETENTION, 30 * DAY) == timedelta(days=32)


def test_a_shorter_stream_never_shortens_the_retention() -> None:
    assert keep_for(RETENTION, 1 * DAY) == RETENTION


def test_a_stream_without_an_age_limit_keeps_every_id() -> None:
    assert keep_for(RETENTION, 0.0) is None
    assert keep_for(RETENTION, None) is None
