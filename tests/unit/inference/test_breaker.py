"""Circuit breaker state machine over a sliding window, on a controlled clock."""

from __future__ import annotations

from services.inference.config import BreakerConfig
from services.inference.resilience.breaker import Breakers, CircuitBreaker, Permit


def state(breaker: CircuitBreaker) -> str:
    """Read through a function so the type checker does not narrow the property between transitions."""
    return breaker.state


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def call(breaker: CircuitBreaker, success: bool) -> None:
    """One call from start to outcome."""
    permit = breaker.allow()
    assert permit is not None
    breaker.record(permit, success)


def trial(breaker: CircuitBreaker) -> Permit:
    permit = breaker.allow()
    assert permit is not None and permit.trial
    return permit


def _breaker(**overrides: float) -> tuple[CircuitBreaker, Clock]:
    values = {"window": 4, "min_calls": 3, "failure_ratio": 0.5, "open_seconds": 10, "half_open_calls": 2}
    values.update(overrides)
    clock = Clock()
    return CircuitBreaker(BreakerConfig(**values), clock), clock


def test_opens_only_after_min_calls_at_the_failure_ratio() -> None:
    breaker, _ = _breaker()
    call(breaker, False)
    call(breaker, False)
    assert state(breaker) == "closed"  # 2 outcomes < min_calls
    call(breaker, True)
    assert state(breaker) == "open"  # 2 of 3 failed
    assert breaker.allow() is None


def test_an_open_breaker_says_how_long_until_its_first_trial() -> None:
    breaker, clock = _breaker(open_seconds=10)
    assert breaker.trial_in() == 0.0  # closed
    for outcome in (False, False, False):
        call(breaker, outcome)
    assert breaker.trial_in() == 10.0
    clock.now += 7.5
    assert breaker.trial_in() == 2.5
    clock.now += 2.5
    assert breaker.trial_in() == 0.0 and state(breaker) == "half_open"


def test_sliding_window_forgets_old_failures() -> None:
    breaker, _ = _breaker(window=4, min_calls=4, failure_ratio=0.75)
    for outcome in (False, False, True, True, True):  # the first failure slides out of the window
        call(breaker, outcome)
    assert state(breaker) == "closed"
    call(breaker, False)
    call(breaker, False)  # window now True, True, False, False: 50% < 75%
    assert state(breaker) == "closed"
    call(breaker, False)  # True, False, False, False: 75%
    assert state(breaker) == "open"


def test_half_open_trials_close_or_reopen() -> None:
    breaker, clock = _breaker()
    for _ in range(3):
        call(breaker, False)
    assert state(breaker) == "open"
    clock.now += 9.9
    assert state(breaker) == "open"
    assert breaker.allow() is None
    clock.now += 0.2
    assert state(breaker) == "half_open"
    first, second = trial(breaker), trial(breaker)
    assert breaker.allow() is None, "only half_open_calls trials at once"
    breaker.record(first, True)
    assert state(breaker) == "half_open"
    breaker.record(second, True)
    assert state(breaker) == "closed"
    # A failed trial opens it again for a full period.
    for _ in range(3):
        call(breaker, False)
    clock.now += 10
    breaker.record(trial(breaker), False)
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


def _opened_with_a_call_in_flight(**overrides: float) -> tuple[CircuitBreaker, Clock, Permit]:
    """A breaker that opened (then turned half-open) while a call started when it was closed still runs."""
    breaker, clock = _breaker(**overrides)
    long_call = breaker.allow()
    assert long_call is not None and not long_call.trial
    for _ in range(3):
        call(breaker, False)
    clock.now += 10
    assert state(breaker) == "half_open"
    return breaker, clock, long_call


def test_a_cancelled_trial_frees_its_slot() -> None:
    breaker, _, _ = _opened_with_a_call_in_flight(half_open_calls=1)
    first = trial(breaker)
    assert breaker.allow() is None
    breaker.release(first)
    assert trial(breaker) is not None


def test_a_trial_that_passed_frees_no_slot_when_its_caller_then_leaves() -> None:
    """The engine records a trial's success, then yields the answer's end; a caller leaving there released the
    permit too, and with half_open_calls=2 a third trial then ran beside the second."""
    breaker, _, _ = _opened_with_a_call_in_flight(half_open_calls=2)
    first, _second = trial(breaker), trial(breaker)
    breaker.record(first, True)
    breaker.release(first)
    assert breaker.allow() is None, "a third trial for two slots"


def test_a_call_from_before_the_breaker_opened_frees_no_trial_slot_when_cancelled() -> None:
    """It released a slot it never took: with half_open_calls=1, two trials then ran at once."""
    breaker, _, long_call = _opened_with_a_call_in_flight(half_open_calls=1)
    running = trial(breaker)
    breaker.release(long_call)
    assert breaker.allow() is None, "a second concurrent trial"
    breaker.record(running, True)
    assert state(breaker) == "closed"


def test_a_call_from_before_the_breaker_opened_does_not_close_it_by_succeeding() -> None:
    """A long stream started while closed and ending well during half-open closed the breaker, no trial run."""
    breaker, _, long_call = _opened_with_a_call_in_flight(half_open_calls=1)
    breaker.record(long_call, True)
    assert state(breaker) == "half_open"
    running = trial(breaker)
    breaker.record(long_call, False)  # nor does its failure re-open it: the trial decides
    assert state(breaker) == "half_open"
    breaker.record(running, True)
    assert state(breaker) == "closed"


def test_a_trial_of_an_earlier_half_open_period_counts_in_no_later_one() -> None:
    breaker, clock, _ = _opened_with_a_call_in_flight(half_open_calls=2)
    slow, failing = trial(breaker), trial(breaker)
    breaker.record(failing, False)  # open again, then half-open again
    clock.now += 10
    assert state(breaker) == "half_open"
    fresh = trial(breaker)
    breaker.record(slow, True)
    breaker.release(slow)
    assert state(breaker) == "half_open"
    second = trial(breaker)
    assert breaker.allow() is None, "the earlier period's trial took or freed no slot of this one"
    breaker.record(fresh, True)
    breaker.record(second, True)
    assert state(breaker) == "closed"


def test_one_breaker_per_provider_and_model() -> None:
    breakers = Breakers(BreakerConfig())
    assert breakers.get("openai", "a") is breakers.get("openai", "a")
    assert breakers.get("openai", "a") is not breakers.get("openai", "b")
    assert breakers.get("openai", "a") is not breakers.get("azure", "a")
