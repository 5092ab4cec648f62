"""End to end: ``parapet up`` when its embedded servers cannot start: one clear error, exit 1, no traceback.

The launcher fails before any service is started, so these tests take seconds. Also a home it cannot write
(a read-only or full disk), damaged identity keys and a missing TLS file: one line naming the file, before
anything is started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import REPO, command_line, command_name, descendants, free_base_port, still_alive

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HANG_GUARD = 120.0  # not a speed claim: the launcher must give up by itself


@pytest.fixture
def home() -> Iterator[Path]:
    # Outside pytest's temporary root (see conftest.launch_up): as root, PostgreSQL runs as another account.
    root = Path(tempfile.mkdtemp(prefix="parapet-up-fail-"))
    yield root / "home"
    shutil.rmtree(root, ignore_errors=True)


def _up_argv(home: Path) -> list[str]:
    """``parapet up`` on ``home`` and a free port range, without the demo tenant."""
    return [
        sys.executable,
        "-m",
        "parapet.cli",
        "up",
        "--home",
        str(home),
        "--base-port",
        str(free_base_port()),
    ]


def _up_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without external servers (the launcher starts its own), plus ``extra``."""
    kept = {k: v for k, v in os.environ.items() if k not in ("PARAPET_DATABASE_URL", "PARAPET_NATS_URL")}
    return {**kept, **(extra or {})}


def parapet_up(home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_up_argv(home), "--no-demo"],
        env=_up_env(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
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


def _one_error(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("parapet up: ")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_a_home_that_cannot_be_written_is_one_error(home: Path) -> None:
    # What a read-only or full disk does to the first file the launcher writes; as root a chmod would not stop
    # it, so the home's parent is a file instead: every write under it fails with an OSError as well.
    home.parent.mkdir(parents=True, exist_ok=True)
    (home.parent / "not-a-folder").write_text("")
    done = parapet_up(home.parent / "not-a-folder" / "home")
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        _one_error(done) == f"parapet up: cannot use {home.parent / 'not-a-folder' / 'home'}: Not a directory"
    )


def test_an_identity_folder_that_cannot_be_written_is_one_error_before_anything_starts(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "identity").write_text("")  # a file where the keys' folder goes
    done = parapet_up(home)
    assert done.returncode == 1, done.stdout + done.stderr
    assert str(home / "identity") in _one_error(done)
    assert not (home / "postgres").exists(), "nothing was started"


def test_a_damaged_signing_key_is_one_error_naming_it_before_anything_starts(home: Path) -> None:
    (home / "identity").mkdir(parents=True)
    (home / "identity" / "signing_key.pem").write_text("half a key\n")
    done = parapet_up(home)
    assert done.returncode == 1, done.stdout + done.stderr
    line = _one_error(done)
    assert str(home / "identity" / "signing_key.pem") in line and "not an Ed25519 private key" in line
    assert not (home / "postgres").exists(), "nothing was started"


def test_a_missing_tls_file_is_a_usage_error_before_anything_starts(home: Path) -> None:
    done = parapet_up(home, env={"PARAPET_TLS_CA_FILE": "/nonexistent/ca.pem"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert (
        _one_error(done)
        == "parapet up: cannot read the TLS file /nonexistent/ca.pem: No such file or directory"
    )
    assert not (home / "postgres").exists(), "nothing was started"


def test_ctrl_c_while_the_database_is_first_made_stops_cleanly(home: Path) -> None:
    # Ctrl-C at a terminal signals the launcher's whole process group: initdb, run in it, died of it, and the
    # launcher reported "initdb failed ... terminated by signal 2" and exit 1 for what was a person stopping it.
    proc = subprocess.Popen(
        [*_up_argv(home), "--no-demo"],
        env=_up_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group, as a shell gives a foreground job
    )
    try:
        deadline = time.monotonic() + HANG_GUARD
        while not any(command_name(pid) == "initdb" for pid in descendants(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline, "initdb never ran"
            time.sleep(0.01)
        tree = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        out, err = proc.communicate(timeout=HANG_GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + err
    assert "Traceback" not in err and "initdb failed" not in err, err
    assert still_alive(tree) == {}
    # PostgreSQL, started once initdb was done, was stopped again: nothing runs on the home's files.
    assert [pid for pid in _pids() if any(str(home) in part for part in command_line(pid))] == []


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
