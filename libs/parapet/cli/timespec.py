"""Moments and periods typed by people: ``2025-01-31``, ``2025-01-31T09:30:00Z``, ``90m``/``24h``/``7d`` ago."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def moment(text: str, now: datetime) -> datetime:
    """An absolute UTC time, or a duration before ``now``; raises ValueError with a readable message."""
    try:
        return _moment(text, now)
    except OverflowError:  # `99999999d` ago, or a zone that moves 9999-12-31 into the year 10000
        raise ValueError(f"{text!r} is out of range: a time must fall within the years 1 to 9999") from None


def _moment(text: str, now: datetime) -> datetime:
    relative = _RELATIVE.match(text.strip())
    if relative:
        return now - timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use 2025-01-31, 2025-01-31T09:30:00Z, or 90m / 24h / 7d (ago)"
        ) from None
    # A time without zone is UTC, like everything Parapet stores.
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def start_of_day(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def start_of_month(now: datetime) -> datetime:
    return start_of_day(now).replace(day=1)


def next_month(start: datetime) -> datetime:
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


def period(name: str, now: datetime) -> datetime:
    """Start of a named period ending now: ``today``, ``month`` (calendar, UTC), or any :func:`moment`."""
    if name == "today":
        return start_of_day(now)
    if name == "month":
        return start_of_month(now)
    return moment(name, now)
