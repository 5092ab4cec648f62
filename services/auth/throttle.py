"""Throttling of repeated authentication failures, per API key prefix and per client (OIDC tokens: per client only).

Per replica and in memory: a credential-guessing client spread over replicas gets at most replicas x the
limit, which is still a tiny fraction of a 256-bit secret's space; what matters is that one prefix or one
client cannot hammer the database and the hash. Successes do not reset the count (a valid key must not
launder guesses made alongside it).

A key's prefix is public (listings, audit records, the CLI, every log line that names the key), so a prefix
over its limit refuses wrong secrets only: the failures remember the keyed hash the database holds for the
prefix (every failed lookup of a known prefix read it), and a key whose hash is that one still goes through.
Until 2026-12-06 the right secret was refused too, so ten wrong guesses a minute from anywhere kept any key
whose prefix one had seen locked out for as long as one kept guessing. Every secret a throttled prefix refuses
counts against the client that sent it (the caller records it): the prefix stops the database reads, the
client's own limit stops the guessing (for part of 2026-12-06 such refusals counted nowhere, and one client
guessed without limit).

The failures also remember why the key itself may not act, as the last lookup read it (revoked, expired,
user or tenant disabled): while the prefix is throttled its own secret is told that from memory, so that
clients still configured with a revoked key read the database at most ``limit`` times a window per prefix,
not at every call. That answer is at most one window old (a user re-enabled meanwhile waits that long here).
"""

from __future__ import annotations

import hmac
import time
from collections import deque
from dataclasses import dataclass, field


# Slotted: up to max_keys (100k) of these live at once, and a per-instance dict would be most of each.
@dataclass(slots=True)
class _Recent:
    times: deque[float]
    # The keyed hash stored for an API key prefix, as the last failed lookup read it (None: no such key).
    stored_hash: bytes | None = None
    # Why that key may not act, as the same lookup read it: (reason, message), None when it may.
    refusal: tuple[str, str] | None = None
    reported: float = field(default=float("-inf"))  # when the throttling was last reported (monotonic)


class FailureThrottle:
    def __init__(self, limit: int, window_seconds: float, *, max_keys: int = 100_000) -> None:
        self._limit = limit
        self._window = window_seconds
        self._max_keys = max_keys
        self._failures: dict[str, _Recent] = {}

    @property
    def window_seconds(self) -> float:
        return self._window

    def _recent(self, key: str, now: float) -> _Recent | None:
        recent = self._failures.get(key)
        if recent is None:
            return None
        times = recent.times
        while times and times[0] <= now - self._window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return recent

    def _throttled(self, key: str, now: float, presented_hash: bytes | None) -> tuple[_Recent | None, bool]:
        """``key``'s failures within the window (None: none) when it is at its limit, and whether
        ``presented_hash`` is the keyed hash stored for the prefix (which a throttled prefix lets through)."""
        recent = self._recent(key, now)
        if recent is None or len(recent.times) < self._limit:
            return None, False
        own = (
            presented_hash is not None
            and recent.stored_hash is not None
            and hmac.compare_digest(recent.stored_hash, presented_hash)
        )
        return recent, own

    def retry_after(self, key: str, *, presented_hash: bytes | None = None) -> float | None:
        """Seconds until ``key`` may try again, or None when it is not throttled. ``presented_hash``: the keyed
        hash of the API key presented; the one stored for the prefix passes a throttled prefix."""
        now = time.monotonic()
        recent, own = self._throttled(key, now, presented_hash)
        if recent is None or own:
            return None
        return max(0.001, recent.times[-self._limit] + self._window - now)

    def refusal_of(self, key: str, presented_hash: bytes) -> tuple[str, str] | None:
        """While ``key`` is throttled, the remembered refusal of the API key whose keyed hash is
        ``presented_hash`` (revoked, expired...): answered without a database read. None otherwise."""
        recent, own = self._throttled(key, time.monotonic(), presented_hash)
        return recent.refusal if recent is not None and own else None

    def record_failure(
        self,
        key: str,
        *,
        stored_hash: bytes | None = None,
        refusal: tuple[str, str] | None = None,
    ) -> bool:
        """Count a failure of ``key``, remembering what the lookup read (``stored_hash``, ``refusal``: see
        ``_Recent``); True when it is now throttled and that was not reported within the window (the caller
        reports it: at most once a window per key while the failures go on)."""
        now = time.monotonic()
        recent = self._recent(key, now)
        if recent is None:
            if len(self._failures) >= self._max_keys:
                self._failures.pop(next(iter(self._failures)))  # the oldest key: bounded memory
            recent = self._failures[key] = _Recent(deque(maxlen=self._limit))
        recent.times.append(now)
        recent.stored_hash = stored_hash
        recent.refusal = refusal
        if len(recent.times) < self._limit or now - recent.reported < self._window:
            return False
        recent.reported = now
        return True
