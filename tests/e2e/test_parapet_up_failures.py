"""End to end: ``parapet up`` when its embedded servers cannot start: one clear error, exit 1, no traceback.

The launcher fails before any service is started, so these tests take seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import REPO, free_base_port

pytestmark = pytest.mark.e2e

HANG_GUARD = 120.0  # not a speed claim: the launcher must give up by itself


@pytest.fixture
def home() -> Iterator[Path]:
    # Outside pytest's temporary root (see conftest.launch_up): as root, PostgreSQL runs as another account.
    root = Path(tempfile.mkdtemp(prefix="parapet-up-fail-"))
    yield root / "home"
    shutil.rmtree(root, ignore_errors=True)


def parapet_up(home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PARAPET_DATABASE_URL", "PARAPET_NATS_URL")}
    argv = [
        sys.executable,
        "-m",
        "parapet.cli",
        "up",
        "--home",
        str(home),
        "--base-port",
        str(free_base_port()),
    ]
    return subprocess.run(
        [*argv, "--no-demo"], env=env, cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD
    )


def test_a_postgres_that_cannot_start_is_one_error_not_a_traceback(home: Path) -> None:
    # A data directory that is not one (a half-restored backup, an initdb killed part way): PostgreSQL exits.
    (home / "postgres").mkdir(parents=True)
    (home / "postgres" / "PG_VERSION").write_text("16\n")
    done = parapet_up(home)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    (first,) = [line for line in done.stderr.splitlines() if line.startswith("parapet up: ")]
    assert first.startswith("parapet up: PostgreSQL exited with code"), done.stderr
    assert str(home / "postgres.log") in first
