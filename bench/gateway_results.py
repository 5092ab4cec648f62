"""The gateway benchmark's arithmetic: latency distributions of runs, what a target adds over the upstream called
directly, whether a rate was held, and the ratios against LiteLLM. Pure functions over the generator's samples."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.stats import LatencySummary

# A rate is held when its p99 stays under this multiple of the same target's p99 one stream at a time
# (against the same streaming upstream), and nothing failed.
HELD_FACTOR = 2.0


@dataclass(frozen=True)
class RunStats:
    """One run of one target: end-of-stream and first-token latencies of its successful requests."""

    requests: int
    errors: Counter[str]
    total: LatencySummary | None
    first_token: LatencySummary | None
    overhead: LatencySummary | None  # the gateway's own account of its time (trailing metadata), ms

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @classmethod
    def of(cls, samples: Sequence[dict[str, Any]]) -> RunStats:
        ok = [s for s in samples if s["error"] is None]
        overheads = [s["overhead_ms"] / 1000.0 for s in ok if s.get("overhead_ms") is not None]
        return cls(
            requests=len(samples),
            errors=Counter(s["error"] for s in samples if s["error"] is not None),
            total=LatencySummary.of([s["total"] for s in ok]) if ok else None,
            first_token=LatencySummary.of([s["first_token"] for s in ok]) if ok else None,
            overhead=LatencySummary.of(overheads) if overheads else None,
        )


@dataclass(frozen=True)
class Added:
    """Percentiles of a target minus the same percentiles of the direct call, in ms."""

    p50: float
    p95: float
    p99: float

    @classmethod
    def between(cls, target: LatencySummary, direct: LatencySummary) -> Added:
        return cls(target.p50 - direct.p50, target.p95 - direct.p95, target.p99 - direct.p99)

    def cells(self) -> list[str]:
        return [f"{self.p50:.2f}", f"{self.p95:.2f}", f"{self.p99:.2f}"]


@dataclass(frozen=True)
class LoadRun:
    """One open-loop run: the stats, and what the target's processes used meanwhile."""

    rate: float
    stats: RunStats
    elapsed: float
    peak_rss: int  # bytes, summed over the target's processes
    cpu_seconds: float  # the target's processes, over the run and the generator's warm-up streams
    warmup: int  # those warm-up streams
    generator_cpu: float  # share of one core the load generator used
    cpu_by_member: dict[str, float] = field(default_factory=dict)  # the same CPU seconds, per process kind

    @property
    def completed(self) -> int:
        return self.stats.requests - self.stats.error_count

    @property
    def cpu_ms_per_request(self) -> float | None:
        return self.cpu_seconds * 1000.0 / (self.completed + self.warmup) if self.completed else None

    def member_ms_per_request(self) -> dict[str, float]:
        if not self.completed:
            return {}
        return {name: s * 1000.0 / (self.completed + self.warmup) for name, s in self.cpu_by_member.items()}


def held(run: RunStats, baseline_p99_ms: float) -> bool:
    """Whether a rate was held: no failures, and p99 under HELD_FACTOR times the one-at-a-time p99."""
    return run.error_count == 0 and run.total is not None and run.total.p99 <= HELD_FACTOR * baseline_p99_ms


@dataclass
class TargetLoad:
    """Every load run of one target, in increasing rate."""

    name: str
    baseline: RunStats  # one stream at a time against the streaming upstream
    runs: list[LoadRun] = field(default_factory=list)

    @property
    def threshold_ms(self) -> float:
        assert self.baseline.total is not None
        return HELD_FACTOR * self.baseline.total.p99

    def is_held(self, run: LoadRun) -> bool:
        return self.baseline.total is not None and held(run.stats, self.baseline.total.p99)

    @property
    def highest_held(self) -> float | None:
        """The highest rate held with every lower rate held too (a rate held only after a failed one is luck)."""
        best = None
        for run in self.runs:
            if not self.is_held(run):
                break
            best = run.rate
        return best

    @property
    def peak_rss(self) -> int:
        return max((run.peak_rss for run in self.runs), default=0)

    def at(self, rate: float) -> LoadRun | None:
        return next((run for run in self.runs if run.rate == rate), None)


def ratio(ours: float | None, theirs: float | None) -> str:
    """``ours / theirs`` as ``"2.5x"``, or "-" when either is missing or zero."""
    if not ours or not theirs:
        return "-"
    return f"{ours / theirs:.2f}x"
