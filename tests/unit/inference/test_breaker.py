"""Circuit breaker state machine over a sliding window, on a controlled clock."""

from __future__ import annotations

from services.inference.config import BreakerConfig
from services.inference.resilience.breaker import Breakers, CircuitBreaker


def state(breaker: CircuitBreaker) -> str:
    """Read through a function so the type checker does not narrow the property between transitions."""
    return breaker.state


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _breaker(**overrides: float) -> tuple[CircuitBreaker, Clock]:
    values = {"window": 4, "min_calls": 3, "failure_ratio": 0.5, "open_seconds": 10, "half_open_calls": 2}
    values.update(overrides)
    clock = Clock()
    return CircuitBreaker(BreakerConfig(**values), clock), clock


def test_opens_only_after_min_calls_at_the_failure_ratio() -> None:
    breaker, _ = _breaker()
    breaker.record(False)
    breaker.record(False)
    assert state(breaker) == "closed"  # 2 outcomes < min_calls
    breaker.record(True)
    assert state(breaker) == "open"  # 2 of 3 failed
    assert not breaker.allow()


def test_sliding_window_forgets_old_failures() -> None:
    breaker, _ = _breaker(window=4, min_calls=4, failure_ratio=0.75)
    for outcome in (False, False, True, True, True):  # the first failure slides out of the window
        breaker.record(outcome)
    assert state(breaker) == "closed"
    breaker.record(False)
    breaker.record(False)  # window now True, True, False, False: 50% < 75%
    assert state(breaker) == "closed"
    breaker.record(False)  # True, False, False, False: 75%
    assert state(breaker) == "open"


def test_half_open_trials_close_or_reopen() -> None:
    breaker, clock = _breaker()
    for _ in range(3):
        breaker.record(False)
    assert state(breaker) == "open"
    clock.now += 9.9
    assert state(breaker) == "open"
    clock.now += 0.2
    assert state(breaker) == "half_open"
    assert breaker.allow() and breaker.allow()
    assert not breaker.allow(), "only half_open_calls trials at once"
    breaker.record(True)
    assert state(breaker) == "half_open"
    breaker.record(True)
    assert state(breaker) == "closed"
    # A failed trial opens it again for a full period.
    for _ in range(3):
        breaker.record(False)
    clock.now += 10
    assert breaker.allow()
    breaker.record(False)
    assert state(breaker) == "open"
    clock.now += 5
    assert state(breaker) == "open"
    assert [(t.old, t.new) for t in breaker.transitions] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
    ]


def test_a_cancelled_trial_frees_its_slot() -> None:
    breaker, clock = _breaker(half_open_calls=1)
    for _ in range(3):
        breaker.record(False)
    clock.now += 10
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release()
    assert breaker.allow()


def test_one_breaker_per_provider_and_model() -> None:
    breakers = Breakers(BreakerConfig())
    assert breakers.get("openai", "a") is breakers.get("openai", "a")
    assert breakers.get("openai", "a") is not breakers.get("openai", "b")
    assert breakers.get("openai", "a") is not breakers.get("azure", "a")
