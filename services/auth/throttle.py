"""Throttling of repeated authentication failures, per API key prefix and per client (OIDC tokens: per client only).

Per replica and in memory: a credential-guessing client spread over replicas gets at most replicas x the
limit, which is still a tiny fraction of a 256-bit secret's space; what matters is that one prefix or one
client cannot hammer the database and the hash. Successes do not reset the count (a valid key must not
launder guesses made alongside it).
"""

from __future__ import annotations

import time
from collections import deque


class FailureThrottle:
    def __init__(self, limit: int, window_seconds: float, *, max_keys: int = 100_000) -> None:
        self._limit = limit
        self._window = window_seconds
        self._max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self._window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, key: str) -> float | None:
        """Seconds until ``key`` may try again, or None when it is not throttled."""
        now = time.monotonic()
        times = self._recent(key, now)
        if times is None or len(times) < self._limit:
            return None
        return max(0.001, times[-self._limit] + self._window - now)

    def record_failure(self, key: str) -> None:
        now = time.monotonic()
        times = self._recent(key, now)
        if times is None:
            if len(self._failures) >= self._max_keys:
                self._failures.pop(next(iter(self._failures)))  # the oldest key: bounded memory
            times = self._failures[key] = deque(maxlen=self._limit)
        times.append(now)
