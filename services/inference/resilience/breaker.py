"""A circuit breaker per provider+model: closed, open, half-open, over a sliding window of outcomes.

Closed: calls flow; the last ``window`` outcomes are kept and the breaker opens when at least ``min_calls`` are
known and the failure share reaches ``failure_ratio``. Open: calls are refused without trying (the fallback chain
answers) until ``open_seconds`` have passed. Half-open: ``half_open_calls`` trial calls are let through; all must
succeed to close (with a clean window), one failure opens it again for another ``open_seconds``.

Every change of state starts a new epoch. ``allow()`` hands out a ``Permit`` naming the epoch it was granted in
and whether it is a half-open trial; an outcome counts only in the epoch its call started in. So a long stream
started while closed that ends during half-open neither closes the breaker (no trial ran) nor, cancelled, frees
a trial slot it never took.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from parapet.kit import metrics
from services.inference.config import BreakerConfig

State = Literal["closed", "open", "half_open"]
_GAUGE = {
    "closed": metrics.BreakerState.CLOSED,
    "half_open": metrics.BreakerState.HALF_OPEN,
    "open": metrics.BreakerState.OPEN,
}


@dataclass
class Permit:
    """Leave to make one call, granted in ``epoch``; ``trial``: one of the half-open trial calls. ``settled``
    once its outcome was recorded: a release after that (the caller leaving while the answer's last part goes
    out) must not hand the trial's slot to another trial."""

    epoch: int
    trial: bool
    settled: bool = False


@dataclass(frozen=True)
class Transition:
    at: float
    old: State
    new: State


class CircuitBreaker:
    def __init__(
        self,
        config: BreakerConfig,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[State], None] | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._on_change = on_change
        self._outcomes: deque[bool] = deque(maxlen=config.window)
        self._state: State = "closed"
        self._epoch = 0
        self._opened_at = 0.0
        self._trials_started = 0
        self._trials_passed = 0
        self.transitions: list[Transition] = []

    @property
    def state(self) -> State:
        if self._state == "open" and self._clock() - self._opened_at >= self._config.open_seconds:
            self._move("half_open")
        return self._state

    def _move(self, new: State) -> None:
        if new == self._state:
            return
        self.transitions.append(Transition(self._clock(), self._state, new))
        self._state = new
        self._epoch += 1
        if new == "open":
            self._opened_at = self._clock()
        if new == "half_open":
            self._trials_started = 0
            self._trials_passed = 0
        if new == "closed":
            self._outcomes.clear()
        if self._on_change is not None:
            self._on_change(new)

    def trial_in(self) -> float:
        """Seconds until this breaker lets a trial call through: 0 unless it is open."""
        if self.state != "open":
            return 0.0
        return max(self._opened_at + self._config.open_seconds - self._clock(), 0.0)

    def allow(self) -> Permit | None:
        """Leave for a call to go to the provider now, or None (open, or every half-open trial taken)."""
        state = self.state
        if state == "closed":
            return Permit(self._epoch, trial=False)
        if state == "open" or self._trials_started >= self._config.half_open_calls:
            return None
        self._trials_started += 1
        return Permit(self._epoch, trial=True)

    def record(self, permit: Permit, success: bool) -> None:
        """The outcome of the call ``permit`` let through."""
        if permit.settled:
            return  # one outcome per call
        permit.settled = True
        state = self.state
        if permit.epoch != self._epoch:
            # Started under another state: an answer to a call made before the breaker opened (or before it
            # closed again) says nothing about the provider's health now, and was no trial.
            return
        if state == "half_open":
            if not success:
                self._move("open")
                return
            self._trials_passed += 1
            if self._trials_passed >= self._config.half_open_calls:
                self._move("closed")
            return
        self._outcomes.append(success)
        known = len(self._outcomes)
        failures = known - sum(self._outcomes)
        if known >= self._config.min_calls and failures / known >= self._config.failure_ratio:
            self._move("open")

    def release(self, permit: Permit) -> None:
        """The call ended without an outcome (its caller cancelled): a trial's slot goes to another trial."""
        if permit.settled:
            return
        permit.settled = True
        if (
            permit.trial and permit.epoch == self._epoch
        ):  # an unsettled trial of this epoch: counted, not passed
            self._trials_started -= 1


class Breakers:
    """One breaker per (provider, model), created on first use."""

    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}

    def get(self, provider: str, model: str) -> CircuitBreaker:
        key = (provider, model)
        breaker = self._breakers.get(key)
        if breaker is None:

            def export(state: State) -> None:
                metrics.set_breaker_state(provider, model, _GAUGE[state])

            breaker = self._breakers[key] = CircuitBreaker(self._config, self._clock, export)
            export("closed")  # the series reads 0 from the first use on, not only after a first change
        return breaker
