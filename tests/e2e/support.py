"""Running ``parapet up`` as a real subprocess and watching its process tree (used by the e2e tests)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from parapet.cli import registry
from parapet.cli.health import SERVING, HealthProber
from parapet.cli.layout import PortLayout
from parapet.cli.registry import ServiceSpec

REPO = Path(__file__).resolve().parents[2]
# All ports of one suite: services +0..+7, NATS +20, PostgreSQL +21.
_RANGE = 22


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            # The command name may contain spaces and parentheses: fields start after the last ')'.
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def start_time(pid: int) -> int | None:
    """Kernel start time of ``pid`` (None when gone), so a reused pid is not mistaken for ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def descendants(pid: int) -> dict[int, int]:
    """Every process below ``pid`` now, with its start time."""
    children = _proc_children()
    found: dict[int, int] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        started = start_time(child)
        if started is not None:
            found[child] = started
            todo.extend(children.get(child, []))
    return found


def still_alive(processes: Mapping[int, int]) -> dict[int, str]:
    return {pid: command_name(pid) for pid, started in processes.items() if start_time(pid) == started}


@dataclass
class Launcher:
    """One ``parapet up`` subprocess; its output goes to files under its home."""

    proc: subprocess.Popen[bytes]
    home: Path
    ports: PortLayout

    @property
    def output(self) -> str:
        return (self.home.parent / "up.out").read_text(errors="replace")

    def logs(self) -> str:
        parts = [f"--- parapet up output:\n{self.output}"]
        for log in sorted(self.home.rglob("*.log")):
            parts.append(f"--- {log}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    def wait_serving(self, specs: tuple[ServiceSpec, ...], timeout: float) -> float:
        """Seconds until every service in ``specs`` answered SERVING; fails with every log otherwise."""
        started = time.monotonic()
        pending = {spec.name: self.ports.service_address(spec) for spec in specs}
        with HealthProber() as prober:
            while pending and time.monotonic() - started < timeout:
                if self.proc.poll() is not None:
                    pytest.fail(f"parapet up exited with {self.proc.returncode}\n{self.logs()}")
                for name, address in list(pending.items()):
                    if prober.status(address, timeout=1.0) == SERVING:
                        del pending[name]
                time.sleep(0.2)
        if pending:
            pytest.fail(f"not SERVING within {timeout} s: {sorted(pending)}\n{self.logs()}")
        return time.monotonic() - started

    def wait_table(self, timeout: float = 10.0) -> str:
        """The launcher prints its endpoints table once it has seen every service SERVING itself."""
        deadline = time.monotonic() + timeout
        while "parapet is up" not in self.output:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                pytest.fail(f"no endpoints table printed\n{self.logs()}")
            time.sleep(0.1)
        return self.output

    def terminate(self, timeout: float) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


LaunchUp = Callable[..., Launcher]


def free_base_port() -> int:
    """A base port whose whole range is free now, away from standard ports and the default 47100."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000)
        if all(_bindable(base + i) for i in range(_RANGE)):
            return base
    raise RuntimeError("no free range of ports found")


def launch(root: Path, *args: str, env: Mapping[str, str] | None = None) -> Launcher:
    """``parapet up --home <root>/home`` on a free port range (another one when someone took a port of it
    meanwhile), with extra arguments and environment."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("PARAPET_DATABASE_URL", "PARAPET_NATS_URL")}
    full_env.update(env or {})
    for _ in range(3):
        base = free_base_port()
        argv = [
            sys.executable,
            "-m",
            "parapet.cli",
            "up",
            "--home",
            str(root / "home"),
            "--base-port",
            str(base),
            # The machine may be busy (others' tests run beside): give the services time to come up.
            "--startup-timeout",
            "180",
            *args,
        ]
        with (root / "up.out").open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=REPO)
        launcher = Launcher(proc, root / "home", PortLayout(base))
        try:
            proc.wait(2.0)
        except subprocess.TimeoutExpired:
            return launcher  # past the port check
        if "ports in use" not in launcher.output:
            pytest.fail(f"parapet up exited with {proc.returncode}\n{launcher.logs()}")
    pytest.fail("no free port range for parapet up")


@contextlib.contextmanager
def running_suite(prefix: str, *args: str, env: Mapping[str, str] | None = None) -> Iterator[Launcher]:
    """A whole suite, every service SERVING and the endpoints printed, for a module of tests; stopped after."""
    # Outside pytest's temporary root: as root, PostgreSQL runs as another account, and pytest resets its
    # root to 0700 whenever another pytest run starts, which would cut the server off from its files.
    root = Path(tempfile.mkdtemp(prefix=prefix))
    launcher = launch(root, *args, env=env)
    proc = launcher.proc
    try:
        launcher.wait_serving(registry.SERVICES, 200.0)
        launcher.wait_table(30.0)
        yield launcher
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(45)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)
