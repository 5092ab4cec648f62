"""A second ``parapet up`` on a home in use: refused before it starts anything, naming the launcher that holds it,
whose pid stays in ``up.lock``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from parapet.cli.layout import HomeLayout
from parapet.cli.up import _home_lock
from tests.e2e.support import REPO, free_base_port


def _second_launcher(home: HomeLayout, base_port: int) -> subprocess.CompletedProcess[str]:
    """``parapet up`` on ``home`` in a process of its own, without this environment's PARAPET_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARAPET_")}
    argv = ["up", "--home", str(home.root), "--base-port", str(base_port), "--no-demo"]
    return subprocess.run(
        [sys.executable, "-m", "parapet.cli", *argv],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_second_launcher_is_refused_and_leaves_the_lock_file_alone(tmp_path: Path) -> None:
    home = HomeLayout(tmp_path / "home")
    with _home_lock(home):  # this test process is the running launcher
        second = _second_launcher(home, free_base_port())
        assert second.returncode == 1, second.stderr
        assert f"another 'parapet up' (pid {os.getpid()}) is running" in second.stderr
        assert home.lock_file.read_text() == f"{os.getpid()}\n"
    assert not (home.root / "postgres").exists(), "nothing was started"


def test_a_second_launcher_on_the_same_home_and_ports_names_the_running_one(tmp_path: Path) -> None:
    # The usual second `parapet up` (another terminal, same folder): its ports are taken by the first suite too,
    # but the advice for busy ports (another --base-port) would only lead to the lock; the lock is the answer.
    home = HomeLayout(tmp_path / "home")
    base = free_base_port()
    with _home_lock(home), socket.socket() as gateway:
        gateway.bind(("127.0.0.1", base))  # the first suite's gateway
        gateway.listen()
        second = _second_launcher(home, base)
    assert second.returncode == 1, second.stderr
    assert second.stderr.strip() == (
        f"parapet up: another 'parapet up' (pid {os.getpid()}) is running with home {home.root}"
    )
