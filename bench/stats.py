"""Latency statistics shared by every benchmark."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, nearest-rank method."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class LatencySummary:
    """Latencies in milliseconds."""

    count: int
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> LatencySummary:
        ms = sorted(s * 1000.0 for s in seconds)
        return cls(len(ms), percentile(ms, 50), percentile(ms, 95), percentile(ms, 99), ms[-1])

    def cells(self) -> list[str]:
        return [f"{self.p50:.3f}", f"{self.p95:.3f}", f"{self.p99:.3f}", f"{self.max:.3f}"]
