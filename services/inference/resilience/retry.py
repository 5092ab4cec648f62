"""How long to wait before the next attempt: exponential backoff with full jitter, Retry-After honoured.

Full jitter (a uniform draw in [0, cap]) spreads the retries of many callers hit by the same outage, so they
do not come back in lockstep. A provider's Retry-After is a floor: retrying earlier only earns another 429.
"""

from __future__ import annotations

import random

from services.inference.config import RetryConfig


def backoff_cap(config: RetryConfig, retry_number: int) -> float:
    """Upper bound of the wait before retry ``retry_number`` (1 = the first retry)."""
    return float(min(config.max_delay_seconds, config.base_delay_seconds * 2 ** (retry_number - 1)))


def next_delay(
    config: RetryConfig,
    retry_number: int,
    retry_after: float | None,
    remaining: float | None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait before retry ``retry_number``, or None when no retry fits (move on to the fallback)."""
    if retry_number >= config.max_attempts:
        return None
    delay = (rng or random).uniform(0.0, backoff_cap(config, retry_number))
    if retry_after is not None:
        if retry_after > config.max_retry_after_seconds:
            return None
        delay = max(delay, retry_after)
    if remaining is not None and delay >= remaining:
        return None  # the caller's deadline would pass while waiting
    return delay
