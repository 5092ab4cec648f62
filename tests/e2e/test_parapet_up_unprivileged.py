"""``parapet up`` works for an ordinary user, not only for root (CI runs as root).

As root, PostgreSQL is run as a dedicated unprivileged user; as anybody else, it runs as that user. The
other e2e tests cover whichever of the two the test run has; this one covers the ordinary user from a
root run, by starting the launcher as ``nobody``. The venv's interpreter lives under /root (not readable
by nobody), so the same-version system interpreter runs with the venv's packages on its path.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from parapet.cli import registry
from parapet.cli.layout import PortLayout
from tests.e2e.support import REPO, Launcher, descendants, free_base_port, still_alive

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SYSTEM_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
UNPRIVILEGED = "nobody"


@pytest.fixture
def unprivileged_dir() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("already an ordinary user: every other e2e test runs parapet up unprivileged")
    if not SYSTEM_PYTHON.exists():
        pytest.fail(f"running as root needs {SYSTEM_PYTHON} to test an ordinary user")
    directory = Path(tempfile.mkdtemp(prefix="parapet-unprivileged-"))
    directory.chmod(0o755)
    shutil.chown(directory, UNPRIVILEGED)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_parapet_up_runs_and_stops_as_an_ordinary_user(unprivileged_dir: Path) -> None:
    base = free_base_port()
    home = unprivileged_dir / "home"
    site_packages = next((REPO / ".venv" / "lib").glob("python3.*/site-packages"))
    env = {
        "PATH": f"{REPO / '.venv' / 'bin'}:/usr/bin:/bin",
        "PYTHONPATH": f"{REPO / 'libs'}:{REPO}:{site_packages}",
        "HOME": str(unprivileged_dir),
    }
    argv = [str(SYSTEM_PYTHON), "-m", "parapet.cli", "up", "--home", str(home), "--base-port", str(base)]
    argv += ["--only", "moderation"]
    with (unprivileged_dir / "up.out").open("wb") as out:
        # user=/group= switch in the child before exec: the launcher itself is the process we signal.
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=unprivileged_dir,
            env=env,
            user=UNPRIVILEGED,
            group="nogroup",
            extra_groups=[],
        )
    up = Launcher(proc, home, PortLayout(base))
    try:
        up.wait_serving((registry.get("moderation"),), 60.0)
        up.wait_table()
        tree = descendants(proc.pid)
        owners = {Path(f"/proc/{pid}").stat().st_uid for pid in [proc.pid, *tree]}
        assert owners == {pwd.getpwnam(UNPRIVILEGED).pw_uid}, owners
        assert (home / "postgres" / "PG_VERSION").exists()
        assert up.terminate(45.0) == 0, up.logs()
        assert still_alive(tree) == {}, up.logs()
    finally:
        if proc.poll() is None:
            proc.kill()
