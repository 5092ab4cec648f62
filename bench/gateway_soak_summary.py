"""The soak's memory series and its summary: is the suite's memory flat once warm?"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import mean

from bench.gateway_results import RunStats
from bench.report import table

MB = 1024 * 1024
FLAT_WITHIN = 0.10  # ±10 % (issue #10)


@dataclass
class MemorySeries:
    """RSS samples of named processes: (seconds since start, {name: bytes})."""

    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)

    def add(self, at: float, rss: dict[str, int]) -> None:
        self.samples.append((at, rss))

    def totals(self) -> list[tuple[float, int]]:
        return [(at, sum(rss.values())) for at, rss in self.samples]

    def window(self, start: float, end: float) -> list[tuple[float, dict[str, int]]]:
        return [(at, rss) for at, rss in self.samples if start <= at < end]


@dataclass(frozen=True)
class Flatness:
    """Mean total RSS over the first minute after warm-up against the last minute of the run."""

    first: float  # bytes
    last: float
    low: int
    high: int

    @property
    def change(self) -> float:
        return (self.last - self.first) / self.first

    @property
    def flat(self) -> bool:
        return abs(self.change) <= FLAT_WITHIN and (self.high - self.low) / self.first <= 2 * FLAT_WITHIN


def flatness(series: MemorySeries, warmup: float, duration: float, minute: float = 60.0) -> Flatness:
    """Compare the minute after ``warmup`` with the run's last minute; low and high over everything after warm-up."""
    after = [(at, total) for at, total in series.totals() if at >= warmup]
    if not after:
        raise ValueError("no samples after the warm-up")
    first = [total for at, total in after if at < warmup + minute] or [after[0][1]]
    last = [total for at, total in after if at >= duration - minute] or [after[-1][1]]
    values = [total for _, total in after]
    return Flatness(mean(first), mean(last), min(values), max(values))


def _per_minute(series: MemorySeries, duration: float) -> str:
    names = sorted({name for _, rss in series.samples for name in rss})
    rows = []
    minute = 0.0
    while minute < duration + 1:
        window = series.window(minute, minute + 60.0)
        if window:
            at, rss = window[0]
            rows.append(
                [
                    f"{at:.0f}",
                    f"{sum(rss.values()) / MB:,.1f}",
                    *(f"{rss.get(n, 0) / MB:,.1f}" for n in names),
                ]
            )
        minute += 60.0
    at, rss = series.samples[-1]
    rows.append(
        [f"{at:.0f}", f"{sum(rss.values()) / MB:,.1f}", *(f"{rss.get(n, 0) / MB:,.1f}" for n in names)]
    )
    return table(["s", "total MB", *(f"{n} MB" for n in names)], rows)


def summary_body(series: MemorySeries, stats: RunStats, rate: float, duration: float, interval: float) -> str:
    warmup = min(60.0, duration / 5)
    flat = flatness(series, warmup, duration)
    latency = (
        "no successful request"
        if stats.total is None
        else f"stream p50 {stats.total.p50:.1f} ms, p99 {stats.total.p99:.1f} ms, max {stats.total.max:.1f} ms"
    )
    errors = ", ".join(f"{n} {kind}" for kind, n in stats.errors.most_common()) or "none"
    return "\n\n".join(
        [
            f"Parapet's whole suite from `parapet up` (as in the gateway benchmark), StreamChat with retrieval off "
            f"against the streaming upstream (50 ms, then 20 chunks 10 ms apart), open loop at {rate:g} "
            f"requests/s for {duration:g} s from one load-generator process; the RSS of each of the eight "
            f"service processes read from /proc every {interval:g} s. Warm-up: the first {warmup:g} s.",
            f"**Memory {'flat' if flat.flat else 'NOT flat'}** (target ±{FLAT_WITHIN:.0%}): mean total RSS "
            f"{flat.first / MB:,.1f} MB in the first minute after warm-up, {flat.last / MB:,.1f} MB in the last "
            f"minute ({flat.change:+.1%}); lowest {flat.low / MB:,.1f} MB, highest {flat.high / MB:,.1f} MB after "
            f"warm-up. Requests: {stats.requests}, failed: {errors}; {latency}.",
            _per_minute(series, duration),
        ]
    )
