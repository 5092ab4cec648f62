"""Restart policy and supervision of real (tiny) child processes, no services needed."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from parapet.cli import registry
from parapet.cli.supervisor import GaveUp, ManagedProcess, RestartPolicy, StartupError, StopFlag, Supervisor


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy(initial_backoff=0.5, max_backoff=3.0, max_quick_failures=5)
    assert [policy.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert not policy.gives_up(4) and policy.gives_up(5)


def _managed(tmp_path: Path, code: str, name: str = "billing") -> ManagedProcess:
    return ManagedProcess(
        spec=registry.get(name),
        argv=[sys.executable, "-c", code],
        env={},
        log_path=tmp_path / f"{name}.log",
        address="127.0.0.1:1",
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_crash_loop_is_restarted_with_backoff_then_given_up(tmp_path: Path) -> None:
    clock = FakeClock()
    reports: list[str] = []
    managed = _managed(tmp_path, "import sys; print('boom'); sys.exit(3)")
    policy = RestartPolicy(initial_backoff=1.0, max_backoff=8.0, stable_after=30.0, max_quick_failures=3)
    supervisor = Supervisor([managed], policy=policy, report=reports.append, clock=clock)
    supervisor.start_all()
    assert managed.proc is not None
    managed.proc.wait()

    assert supervisor.step() is None
    assert managed.restart_due == 1001.0
    assert "billing exited unexpectedly with code 3" in reports[-1]
    clock.now = 1001.0
    assert supervisor.step() is None  # restarts now
    assert "restarted" in reports[-1]
    managed.proc.wait()
    clock.now = 1002.0
    assert supervisor.step() is None
    assert managed.restart_due == 1004.0  # second quick failure: twice the wait
    clock.now = 1004.0
    supervisor.step()
    managed.proc.wait()
    assert supervisor.step() == GaveUp("billing", 3)
    assert tmp_path.joinpath("billing.log").read_text().count("boom") == 3


def test_a_failure_after_a_stable_run_starts_the_count_again(tmp_path: Path) -> None:
    clock = FakeClock()
    managed = _managed(tmp_path, "raise SystemExit(1)")
    policy = RestartPolicy(initial_backoff=1.0, stable_after=30.0, max_quick_failures=2)
    supervisor = Supervisor([managed], policy=policy, report=lambda _: None, clock=clock)
    supervisor.start_all()
    assert managed.proc is not None
    managed.proc.wait()
    managed.quick_failures = 1
    clock.now += 60  # it ran for a minute before failing
    assert supervisor.step() is None
    assert managed.quick_failures == 1


def test_a_service_exiting_at_startup_is_named_with_its_log(tmp_path: Path) -> None:
    managed = _managed(tmp_path, "import sys; print('no database'); sys.exit(1)", name="audit")
    supervisor = Supervisor([managed], report=lambda _: None)
    supervisor.start_all()
    with pytest.raises(StartupError) as info:
        supervisor.wait_serving(10, threading.Event(), tick=0.05)
    assert info.value.service == "audit"
    assert "exited with code 1" in str(info.value) and "no database" in str(info.value)


def test_a_service_never_serving_times_out_naming_it(tmp_path: Path) -> None:
    managed = _managed(tmp_path, "import time; time.sleep(60)", name="retrieval")
    supervisor = Supervisor([managed], report=lambda _: None)
    supervisor.start_all()
    try:
        with pytest.raises(StartupError, match=r"retrieval not SERVING after 0\.5 s"):
            supervisor.wait_serving(0.5, threading.Event(), tick=0.05)
    finally:
        supervisor.stop_all(5)
    assert managed.exit_code() is not None


def test_stop_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ok', flush=True); time.sleep(60)"
    managed = _managed(tmp_path, code)
    reports: list[str] = []
    supervisor = Supervisor([managed], report=reports.append)
    supervisor.start_all()
    log = tmp_path / "billing.log"
    stop = threading.Event()
    while "ok" not in log.read_text():
        stop.wait(0.02)
    supervisor.stop_all(0.5)
    assert managed.exit_code() == -9
    assert "did not stop" in reports[-1]


def test_wait_serving_returns_false_when_stopped(tmp_path: Path) -> None:
    managed = _managed(tmp_path, "import time; time.sleep(60)")
    supervisor = Supervisor([managed], report=lambda _: None)
    supervisor.start_all()
    stop = threading.Event()
    stop.set()
    try:
        assert supervisor.wait_serving(30, stop, tick=0.05) is False
    finally:
        supervisor.stop_all(5)


def test_stop_flag_waits_until_set_or_timeout() -> None:
    flag = StopFlag()
    assert flag.wait(0.05) is False
    flag.set()
    assert flag.is_set() and flag.wait(10) is True
