"""Backoff bounds (full jitter, Retry-After floor, deadline) and exact cost arithmetic."""

from __future__ import annotations

import random
from decimal import Decimal

from services.inference.config import ModelConfig, RetryConfig
from services.inference.pricing import cost_micros_exact, to_micros
from services.inference.providers.base import Usage, error_for_status, parse_retry_after
from services.inference.resilience.retry import backoff_cap, next_delay

CONFIG = RetryConfig(
    max_attempts=4, base_delay_seconds=0.1, max_delay_seconds=0.3, max_retry_after_seconds=10
)


def test_full_jitter_stays_under_an_exponential_cap() -> None:
    assert [backoff_cap(CONFIG, n) for n in (1, 2, 3)] == [0.1, 0.2, 0.3]
    rng = random.Random(7)
    for retry in (1, 2, 3):
        delays = [next_delay(CONFIG, retry, None, None, rng) for _ in range(2000)]
        assert all(d is not None and 0 <= d <= backoff_cap(CONFIG, retry) for d in delays)
        # Full jitter spreads over the whole range, not just near the cap.
        assert min(d for d in delays if d is not None) < backoff_cap(CONFIG, retry) * 0.05


def test_attempts_retry_after_and_deadline_limit_retries() -> None:
    assert next_delay(CONFIG, 4, None, None) is None  # attempts used up
    assert next_delay(CONFIG, 1, 2.5, None) == 2.5  # Retry-After is a floor
    assert next_delay(CONFIG, 1, 11, None) is None  # too long: fall back instead
    assert next_delay(CONFIG, 1, 2.5, 2.0) is None  # would overrun the deadline
    assert next_delay(CONFIG, 1, None, 0.0) is None


def test_retry_after_forms_and_status_mapping() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert error_for_status(429, {"retry-after": "1"}, "x").kind == "rate_limited"
    assert error_for_status(503, None, "x").retryable
    assert not error_for_status(400, None, "x").retryable
    assert not error_for_status(401, None, "x").retryable


def test_cost_is_exact_in_micros() -> None:
    model = ModelConfig(
        name="m",
        provider="p",
        input_price_per_million=Decimal("2.50"),
        output_price_per_million=Decimal("10.00"),
        cached_input_price_per_million=Decimal("1.25"),
    )
    usage = Usage(prompt_tokens=1_001, completion_tokens=333, cached_tokens=401)
    exact = cost_micros_exact(model, usage)
    assert exact == Decimal("600") * Decimal("2.50") + 401 * Decimal("1.25") + 333 * Decimal("10.00")
    assert to_micros(exact) == 5331  # 1500 + 501.25 + 3330 = 5331.25
    # Sums stay exact: 100,000 one-token calls at 0.15/M cost exactly 0.015 USD.
    cheap = ModelConfig(name="c", provider="p", input_price_per_million=Decimal("0.15"))
    total = sum((cost_micros_exact(cheap, Usage(1, 0)) for _ in range(100_000)), Decimal(0))
    assert to_micros(total) == 15_000
    assert to_micros(Decimal("0.5")) == 1 and to_micros(Decimal("0.49")) == 0
