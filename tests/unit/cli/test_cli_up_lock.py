"""A second ``parapet up`` on a home in use: refused before it starts anything, naming the launcher that holds it,
whose pid stays in ``up.lock``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from parapet.cli.layout import HomeLayout
from parapet.cli.up import _home_lock
from tests.e2e.support import REPO, free_base_port


def test_a_second_launcher_is_refused_and_leaves_the_lock_file_alone(tmp_path: Path) -> None:
    home = HomeLayout(tmp_path / "home")
    with _home_lock(home):  # this test process is the running launcher
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARAPET_")}
        argv = ["up", "--home", str(home.root), "--base-port", str(free_base_port()), "--no-demo"]
        second = subprocess.run(
            [sys.executable, "-m", "parapet.cli", *argv],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1, second.stderr
        assert f"another 'parapet up' (pid {os.getpid()}) is running" in second.stderr
        assert home.lock_file.read_text() == f"{os.getpid()}\n"
    assert not (home.root / "postgres").exists(), "nothing was started"
