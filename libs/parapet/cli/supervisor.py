"""Service processes of ``parapet up``: start, wait until SERVING, restart with backoff, stop.

Synchronous on purpose: the launcher only spawns, polls and signals processes, and a plain loop that
sleeps on a stop event reacts to SIGINT/SIGTERM within one tick without an event loop in the way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from parapet.cli.health import SERVING, HealthProber
from parapet.cli.registry import ServiceSpec
from parapet.embedded.process import spawn

Clock = Callable[[], float]
Report = Callable[[str], None]


class StopSignal(Protocol):
    """Set when the launcher must stop; ``wait`` sleeps until set or ``timeout``, returns whether set."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float) -> bool: ...


class StopFlag:
    """A StopSignal safe to set from a signal handler.

    threading.Event is not: its set() takes a non-reentrant lock, and a handler that runs while the
    interrupted main thread holds that lock inside Event.wait() deadlocks the launcher. A plain
    attribute polled every 50 ms cannot.
    """

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._set:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(remaining, 0.05))
        return self._set


class StartupError(RuntimeError):
    """A service that exited or did not become SERVING in time; names it and quotes its log."""

    def __init__(self, service: str, reason: str, log_path: Path) -> None:
        self.service = service
        super().__init__(f"{service} {reason}; last lines of {log_path}:\n{log_tail(log_path)}")


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff for services that exit; give up after ``max_quick_failures`` in a row.

    A run shorter than ``stable_after`` seconds counts as a quick failure; a longer one resets the
    count, so a service that crashes once a day is restarted forever but a crash loop is not.
    """

    initial_backoff: float = 0.5
    max_backoff: float = 15.0
    stable_after: float = 30.0
    max_quick_failures: int = 5

    def backoff(self, quick_failures: int) -> float:
        """Seconds to wait before restart number ``quick_failures`` (1 = first)."""
        return float(min(self.initial_backoff * 2 ** max(quick_failures - 1, 0), self.max_backoff))

    def gives_up(self, quick_failures: int) -> bool:
        return quick_failures >= self.max_quick_failures


@dataclass
class ManagedProcess:
    """One service process and its restart bookkeeping."""

    spec: ServiceSpec
    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    address: str
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    started_at: float = field(default=0.0, init=False)
    quick_failures: int = field(default=0, init=False)
    restart_due: float | None = field(default=None, init=False)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self, now: float) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as log:
            # A marker per start, so a restarted service's log shows where each run begins.
            log.write(
                f"--- parapet up: starting {self.spec.name} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
            )
        self.proc = spawn(self.argv, log_path=self.log_path, env=dict(self.env))
        self.started_at = now
        self.restart_due = None

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()


@dataclass(frozen=True)
class GaveUp:
    service: str
    failures: int


class Supervisor:
    """Runs a fixed set of service processes until told to stop or one crash-loops."""

    def __init__(
        self,
        processes: Sequence[ManagedProcess],
        *,
        policy: RestartPolicy | None = None,
        report: Report = print,
        clock: Clock = time.monotonic,
    ) -> None:
        self.processes = tuple(processes)
        self.policy = policy or RestartPolicy()
        self._report = report
        self._clock = clock

    def start_all(self) -> None:
        # All at once: each service waits for its own dependencies, and a parallel cold start of
        # eight Python processes is several times faster than one after another.
        for managed in self.processes:
            managed.start(self._clock())

    def wait_serving(self, timeout: float, stop: StopSignal, tick: float = 0.2) -> bool:
        """Block until every service is SERVING; False when ``stop`` was set first.

        Raises StartupError for the first service that exits or is still not SERVING at the deadline.
        """
        deadline = self._clock() + timeout
        pending = {m.spec.name: m for m in self.processes}
        last: dict[str, str] = {}
        with HealthProber() as prober:
            while pending:
                for name, managed in list(pending.items()):
                    code = managed.exit_code()
                    if code is not None:
                        raise StartupError(name, f"exited with code {code} while starting", managed.log_path)
                    last[name] = prober.status(managed.address, timeout=min(1.0, tick * 5))
                    if last[name] == SERVING:
                        del pending[name]
                if not pending:
                    break
                if self._clock() >= deadline:
                    name, managed = next(iter(pending.items()))
                    reason = f"not SERVING after {timeout:g} s (last health status: {last.get(name)})"
                    raise StartupError(name, reason, managed.log_path)
                if stop.wait(tick):
                    return False
        return not stop.is_set()

    def step(self) -> GaveUp | None:
        """One supervision pass: notice exits, schedule and perform restarts."""
        now = self._clock()
        for managed in self.processes:
            if managed.restart_due is not None:
                if now >= managed.restart_due:
                    managed.start(now)
                    self._report(f"{managed.spec.name} restarted (pid {managed.pid})")
                continue
            code = managed.exit_code()
            if code is None:
                continue
            ran = now - managed.started_at
            managed.quick_failures = managed.quick_failures + 1 if ran < self.policy.stable_after else 1
            if self.policy.gives_up(managed.quick_failures):
                return GaveUp(managed.spec.name, managed.quick_failures)
            delay = self.policy.backoff(managed.quick_failures)
            managed.restart_due = now + delay
            self._report(
                f"{managed.spec.name} exited unexpectedly with code {code} after {ran:.1f} s; "
                f"restarting in {delay:g} s (see {managed.log_path})"
            )
        return None

    def supervise(self, stop: StopSignal, tick: float = 0.2) -> GaveUp | None:
        """Keep the services running until ``stop`` is set (None) or one crash-loops (GaveUp)."""
        while not stop.wait(tick):
            gave_up = self.step()
            if gave_up is not None:
                return gave_up
        return None

    def stop_all(self, timeout: float) -> None:
        """SIGTERM every service at once, SIGKILL whatever is left after ``timeout`` seconds."""
        running = [m.proc for m in self.processes if m.proc is not None and m.proc.poll() is None]
        # In parallel: stopping one after another would add up every service's drain time.
        for proc in running:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in running:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                self._report(f"pid {proc.pid} did not stop within {timeout:g} s; killing it")
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        for managed in self.processes:
            managed.restart_due = None


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    # Each service leads its own process group (spawn starts a new session): signal anything it forked too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
