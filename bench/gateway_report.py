"""The gateway benchmark's section of docs/benchmarks.md: the method, then one table per regime and a summary
with the targets and the ratios against LiteLLM."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.gateway_results import Added, LoadRun, RunStats, TargetLoad, ratio
from bench.gateway_runs import Scenario
from bench.report import table

MB = 1024 * 1024


@dataclass(frozen=True)
class Measured:
    """Everything one benchmark run measured."""

    scenarios: list[Scenario]
    unloaded: dict[str, RunStats]  # zero-latency upstream, one at a time
    loads: dict[str, TargetLoad]  # by scenario key; baseline = streaming upstream one at a time
    idle_rss: dict[str, int]  # bytes, before any load
    infrastructure_rss: int  # PostgreSQL + NATS under Parapet, peak
    rates: Sequence[float]
    seconds: float
    calls: int
    machine_load: str  # load averages before and after


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _litellm_keys(m: Measured) -> list[str]:
    return [s.key for s in m.scenarios if s.key.startswith("d")]


def _best_litellm(m: Measured) -> TargetLoad | None:
    """LiteLLM's configuration that held the highest rate (the fairest one to compare against)."""
    loads = [m.loads[k] for k in _litellm_keys(m) if k in m.loads]
    return max(loads, key=lambda t: t.highest_held or 0.0, default=None)


def unloaded_table(m: Measured) -> str:
    direct = m.unloaded["a"]
    rows = []
    for s in m.scenarios:
        stats = m.unloaded[s.key]
        if stats.total is None or stats.first_token is None:
            rows.append([f"({s.key}) {s.label}", *["-"] * 9, str(stats.error_count)])
            continue
        assert direct.total is not None and direct.first_token is not None
        added = Added.between(stats.total, direct.total)
        first = Added.between(stats.first_token, direct.first_token)
        own = stats.overhead
        rows.append(
            [
                f"({s.key}) {s.label}",
                *stats.total.cells()[:3],
                *(added.cells() if s.key != "a" else ["-"] * 3),
                *(
                    first.cells()[::2]
                    if s.key != "a"
                    else [_ms(stats.first_token.p50), _ms(stats.first_token.p99)]
                ),
                "-" if own is None else f"{own.p50:.2f} / {own.p99:.2f}",
                str(stats.error_count),
            ]
        )
    return table(
        [
            "target",
            "stream p50 ms",
            "p95",
            "p99",
            "**added p50**",
            "added p95",
            "**added p99**",
            "first token added p50",
            "p99",
            "gateway's own account p50 / p99",
            "errors",
        ],
        rows,
    )


def load_table(m: Measured) -> str:
    direct = m.loads["a"]
    rows = []
    for s in m.scenarios:
        load = m.loads[s.key]
        for run in load.runs:
            stats = run.stats
            reference = direct.at(run.rate)
            theirs = reference.stats.total if reference is not None else None
            added = (
                Added.between(stats.total, theirs).cells()
                if stats.total is not None and theirs is not None and s.key != "a"
                else ["-"] * 3
            )
            rows.append(
                [
                    f"({s.key}) {s.label}",
                    f"{run.rate:g}",
                    *(stats.total.cells()[:3] if stats.total else ["-"] * 3),
                    *added,
                    _ms(stats.first_token.p99 if stats.first_token else None),
                    ", ".join(f"{n} {kind}" for kind, n in stats.errors.most_common()) or "0",
                    "yes" if load.is_held(run) else "**no**",
                    f"{run.peak_rss / MB:,.0f}",
                    _ms(run.cpu_ms_per_request),
                    f"{run.generator_cpu:.0%}",
                ]
            )
    return table(
        [
            "target",
            "rate/s",
            "stream p50 ms",
            "p95",
            "p99",
            "added p50",
            "added p95",
            "added p99",
            "first token p99",
            "errors",
            "held",
            "peak RSS MB",
            "CPU ms/request",
            "generator CPU",
        ],
        rows,
    )


def baseline_table(m: Measured) -> str:
    rows = []
    for s in m.scenarios:
        base = m.loads[s.key].baseline
        if base.total is None or base.first_token is None:
            rows.append([f"({s.key}) {s.label}", "-", "-", "-", "-"])
            continue
        rows.append(
            [
                f"({s.key}) {s.label}",
                f"{base.total.p50:.1f}",
                f"{base.total.p99:.1f}",
                f"{base.first_token.p50:.1f}",
                f"{m.loads[s.key].threshold_ms:.1f}",
            ]
        )
    return table(
        ["target", "stream p50 ms", "p99", "first token p50", "held while load p99 ≤ (ms)"],
        rows,
    )


def summary_table(m: Measured) -> str:
    best = _best_litellm(m)
    best_stats = None if best is None else m.unloaded[best.name]
    rows = []
    for s in m.scenarios:
        load, stats = m.loads[s.key], m.unloaded[s.key]
        direct = m.unloaded["a"]
        added = (
            Added.between(stats.total, direct.total)
            if stats.total is not None and direct.total is not None and s.key != "a"
            else None
        )
        litellm_added = (
            Added.between(best_stats.total, direct.total)
            if best_stats is not None and best_stats.total is not None and direct.total is not None
            else None
        )
        at200 = load.at(200)
        direct200 = m.loads["a"].at(200)
        added200 = (
            Added.between(at200.stats.total, direct200.stats.total).p99
            if s.key != "a" and at200 and direct200 and at200.stats.total and direct200.stats.total
            else None
        )
        held_run = load.at(load.highest_held) if load.highest_held else None
        best_held_run = best.at(best.highest_held) if best and best.highest_held else None
        rows.append(
            [
                f"({s.key}) {s.label}",
                _ms(added.p50 if added else None),
                _ms(added.p99 if added else None),
                _ms(added200),
                "-" if load.highest_held is None else f"{load.highest_held:g}",
                f"{m.idle_rss[s.key] / MB:,.0f} / {load.peak_rss / MB:,.0f}",
                _ms(held_run.cpu_ms_per_request if held_run else None),
                ratio(load.highest_held, best.highest_held if best else None) if s.key != "a" else "-",
                ratio(added.p50 if added else None, litellm_added.p50 if litellm_added else None),
                ratio(load.peak_rss, best.peak_rss if best else None) if s.key != "a" else "-",
                ratio(
                    held_run.cpu_ms_per_request if held_run else None,
                    best_held_run.cpu_ms_per_request if best_held_run else None,
                )
                if s.key != "a"
                else "-",
            ]
        )
    return table(
        [
            "target",
            "unloaded added p50 ms",
            "added p99",
            "added p99 at 200/s",
            "highest rate held /s",
            "RSS idle / peak MB",
            "CPU ms/request at that rate",
            "rate held vs LiteLLM",
            "added p50 vs LiteLLM",
            "peak RSS vs LiteLLM",
            "CPU/request vs LiteLLM",
        ],
        rows,
    )


def _reference_run(load: TargetLoad) -> LoadRun | None:
    """The run a breakdown is taken from: the highest rate held, else the first (lowest) rate."""
    return load.at(load.highest_held) if load.highest_held else (load.runs[0] if load.runs else None)


def cpu_table(m: Measured) -> str:
    """CPU ms per request of each process kind of every target, where the time goes."""
    runs = {s.key: _reference_run(m.loads[s.key]) for s in m.scenarios}
    members = sorted({name for run in runs.values() if run for name in run.cpu_by_member})
    rows = []
    for s in m.scenarios:
        run = runs[s.key]
        if run is None:
            continue
        per = run.member_ms_per_request()
        rows.append(
            [
                f"({s.key}) {s.label}",
                f"{run.rate:g}",
                *(_ms(per.get(name)) for name in members),
                _ms(run.cpu_ms_per_request),
            ]
        )
    return table(["target", "at rate/s", *members, "total"], rows)


def targets_text(m: Measured) -> str:
    """The issue's targets for (b), each with what was measured and whether it was met."""
    direct, full = m.unloaded["a"], m.unloaded.get("b")
    if full is None or full.total is None or direct.total is None:
        return "Targets for (b): not measured (the gateway's StreamChat did not answer)."
    added = Added.between(full.total, direct.total)
    b, a = m.loads["b"], m.loads["a"]
    at200, direct200 = b.at(200), a.at(200)
    added200 = (
        Added.between(at200.stats.total, direct200.stats.total).p99
        if at200 and direct200 and at200.stats.total and direct200.stats.total
        else None
    )
    best = _best_litellm(m)
    theirs = best.highest_held if best else None

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "**not met**")

    lines = [
        f"- unloaded added p50 ≤ 2 ms: {added.p50:.2f} ms, {verdict(added.p50 <= 2)}",
        f"- unloaded added p99 ≤ 5 ms: {added.p99:.2f} ms, {verdict(added.p99 <= 5)}",
        f"- added p99 ≤ 15 ms at 200 requests/s: {_ms(added200)} ms, "
        f"{verdict(None if added200 is None else added200 <= 15 and b.is_held(at200) if at200 else None)}",
        f"- highest rate held ≥ 2x LiteLLM's ({'-' if theirs is None else f'{theirs:g}'}/s): "
        f"{'-' if b.highest_held is None else f'{b.highest_held:g}'}/s, "
        f"{verdict(None if not theirs else (b.highest_held or 0) >= 2 * theirs)}",
    ]
    return "Targets for (b), from the issue:\n\n" + "\n".join(lines)


def body(m: Measured, method: str) -> str:
    parts = [
        method,
        f"Machine load (1/5/15-minute load averages) before and after: {m.machine_load}.",
        targets_text(m),
        "**Summary.** Added latency is the target's percentile minus the direct call's (unloaded regime). "
        "RSS sums every process of the target (Parapet: its eight services, not PostgreSQL and NATS, which "
        f"peaked at {m.infrastructure_rss / MB:,.0f} MB; LiteLLM: its master and workers). Ratios are Parapet's "
        "figure over the LiteLLM configuration that held the highest rate.",
        summary_table(m),
        f"**Unloaded**: zero-latency upstream (every chunk at once), {m.calls} streams per target one at a "
        "time after warm-up, the targets interleaved request by request, 50 ms apart (so one target's work "
        "after its answer, such as Parapet's settlement and audit, never lands on the next one's stream). "
        "The gateway's own account is the "
        "`parapet-overhead-ms` trailing metadata (its time minus the time it waited on inference's stream).",
        unloaded_table(m),
        "**One at a time against the streaming upstream** (50 ms to the first token, then 20 chunks 10 ms "
        "apart): the reference each target's loaded p99 is held against.",
        baseline_table(m),
        f"**Open-loop load** against the streaming upstream, {m.seconds:g} s per rate (requests started on "
        "schedule whatever the earlier ones did; latency from the scheduled start). A target's higher rates "
        "are skipped once one is not held. Added = the same percentile of (a) at the same rate subtracted. "
        "CPU ms/request sums the target's processes over the run; generator CPU is the load generator's "
        "share of one core (near 100 % it, not the target, sets the pace).",
        load_table(m),
        "**Where the CPU goes**: CPU ms per request of each process of a target (Parapet: per service; the "
        "direct call: the upstream emulator itself; LiteLLM: all its processes), over the run at the highest "
        "rate held (else the lowest rate), warm-up streams included in the count.",
        cpu_table(m),
    ]
    return "\n\n".join(parts)
