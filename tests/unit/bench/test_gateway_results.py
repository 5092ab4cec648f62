"""The gateway benchmark's arithmetic: added latency, held rates, CPU per request, ratios, soak flatness."""

from __future__ import annotations

from typing import Any

import pytest

from bench.gateway_results import Added, LoadRun, RunStats, TargetLoad, held, ratio
from bench.gateway_soak_summary import MemorySeries, flatness
from bench.stats import LatencySummary

MB = 1024 * 1024


def samples(totals_ms: list[float], errors: int = 0) -> list[dict[str, Any]]:
    ok = [
        {"scheduled": 0.0, "first_token": t / 2000, "total": t / 1000, "overhead_ms": None, "error": None}
        for t in totals_ms
    ]
    failed = [
        {"scheduled": 0.0, "first_token": None, "total": None, "overhead_ms": None, "error": "timeout"}
    ] * errors
    return ok + failed


def run(rate: float, totals_ms: list[float], errors: int = 0, cpu: float = 1.0) -> LoadRun:
    return LoadRun(
        rate=rate,
        stats=RunStats.of(samples(totals_ms, errors)),
        elapsed=1.0,
        peak_rss=100 * MB,
        cpu_seconds=cpu,
        generator_cpu=0.2,
        warmup=0,
    )


def test_run_stats_count_errors_by_kind_and_summarise_the_rest() -> None:
    stats = RunStats.of(samples([10, 20, 30, 40], errors=2))
    assert stats.requests == 6
    assert stats.error_count == 2
    assert stats.errors["timeout"] == 2
    assert stats.total is not None and stats.total.p50 == pytest.approx(20)
    assert stats.first_token is not None and stats.first_token.p50 == pytest.approx(10)


def test_added_is_percentile_minus_percentile() -> None:
    ours = LatencySummary.of([0.010, 0.012, 0.020])
    direct = LatencySummary.of([0.004, 0.005, 0.006])
    added = Added.between(ours, direct)
    assert added.p50 == pytest.approx(7.0)
    assert added.p99 == pytest.approx(14.0)


def test_a_rate_is_held_under_twice_the_one_at_a_time_p99_with_no_failure() -> None:
    assert held(RunStats.of(samples([100, 200, 399])), baseline_p99_ms=200)
    assert not held(RunStats.of(samples([100, 200, 401])), baseline_p99_ms=200)
    assert not held(RunStats.of(samples([100, 200], errors=1)), baseline_p99_ms=200)
    assert not held(RunStats.of(samples([], errors=3)), baseline_p99_ms=200)


def test_highest_held_stops_at_the_first_rate_not_held() -> None:
    load = TargetLoad("b", baseline=RunStats.of(samples([250, 260, 300])))
    load.runs += [run(25, [260]), run(50, [280]), run(100, [900]), run(200, [300])]
    assert load.threshold_ms == pytest.approx(600)
    assert load.highest_held == 50
    assert load.at(100) is load.runs[2]
    assert load.at(75) is None


def test_nothing_held_when_the_lowest_rate_fails() -> None:
    load = TargetLoad("d1", baseline=RunStats.of(samples([400])))
    load.runs.append(run(25, [5000]))
    assert load.highest_held is None


def test_cpu_per_request_counts_the_warmup_streams_the_cpu_covered() -> None:
    measured = LoadRun(
        rate=10,
        stats=RunStats.of(samples([1.0] * 80)),
        elapsed=8.0,
        peak_rss=0,
        cpu_seconds=0.5,
        generator_cpu=0.1,
        warmup=20,
    )
    assert measured.cpu_ms_per_request == pytest.approx(5.0)
    assert run(10, [], errors=5).cpu_ms_per_request is None


def test_ratio() -> None:
    assert ratio(400, 40) == "10.00x"
    assert ratio(None, 40) == "-"
    assert ratio(3, 0) == "-"


def test_flatness_compares_first_and_last_minute_after_warmup() -> None:
    series = MemorySeries()
    for second in range(0, 600, 5):
        warm = 300 * MB if second >= 60 else 200 * MB
        series.add(float(second), {"gateway": warm + second * 10_000, "auth": 100 * MB})
    flat = flatness(series, warmup=60, duration=600)
    assert flat.first > 400 * MB
    assert 0 < flat.change < 0.02
    assert flat.flat


def test_growing_memory_is_not_flat() -> None:
    series = MemorySeries()
    for second in range(0, 600, 5):
        series.add(float(second), {"gateway": 100 * MB + second * MB // 10})
    flat = flatness(series, warmup=60, duration=600)
    assert flat.change > 0.10
    assert not flat.flat
