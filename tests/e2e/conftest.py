"""Fixtures of the end-to-end tests: a free port range and a ``parapet up`` launcher."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from parapet.cli.layout import PortLayout
from tests.e2e.support import REPO, Launcher, LaunchUp, free_base_port


@pytest.fixture
def base_port() -> int:
    return free_base_port()


@pytest.fixture
def launch_up(base_port: int) -> Iterator[LaunchUp]:
    """Start ``parapet up --home <tmp>/home --base-port <free>`` with extra args and environment."""
    launched: list[Launcher] = []
    # Outside pytest's temporary root, as in support.running_suite: as root, PostgreSQL runs as another
    # account, and pytest resets its root to 0700 whenever another pytest run starts, which would cut a running
    # server off from its files (seen when two runs overlapped: initdb "Permission denied").
    tmp_path = Path(tempfile.mkdtemp(prefix="parapet-up-"))

    def launch(*args: str, env: Mapping[str, str] | None = None) -> Launcher:
        home = tmp_path / "home"
        full_env = {
            k: v for k, v in os.environ.items() if k not in ("PARAPET_DATABASE_URL", "PARAPET_NATS_URL")
        }
        full_env.update(env or {})
        argv = [sys.executable, "-m", "parapet.cli", "up", "--home", str(home), "--base-port", str(base_port)]
        with (tmp_path / "up.out").open("wb") as out:
            proc = subprocess.Popen(
                [*argv, *args], stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=REPO
            )
        launcher = Launcher(proc, home, PortLayout(base_port))
        launched.append(launcher)
        return launcher

    yield launch
    for launcher in launched:
        # A failed test must not leave a suite running: SIGKILL the launcher; its children die with it
        # (PR_SET_PDEATHSIG), which is itself part of what `parapet up` promises.
        if launcher.proc.poll() is None:
            launcher.proc.kill()
            launcher.proc.wait()
    shutil.rmtree(tmp_path, ignore_errors=True)
