"""Child processes that die with their parent and stop within a bound."""

import contextlib
import functools
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class EmbeddedStartError(RuntimeError):
    """An embedded server that could not start (exited, never ready, binary missing); the message says why and
    where its log is, so a launcher can print it as one error instead of a traceback."""


# The parent-death signal is armed by util-linux's ``setpriv`` in the child, after exec, not by Python code run
# between fork and exec: a child of a threaded process (gRPC runs threads) may only do async-signal-safe work
# there, and a pre-exec hook also runs Python's and gRPC's after-fork handlers in the child. Seen: the child of
# a test process whose gRPC server and channels were busy died of SIGSEGV before it could exec nats-server.
# Without a pre-exec hook, subprocess forks (or vforks) and execs in C only. Not covered: a parent that dies in
# the instant between the fork and setpriv's prctl (the old hook checked getppid for it; setpriv cannot).
@functools.cache
def _setpriv() -> str | None:
    """util-linux's ``setpriv``, if it is here and knows ``--pdeathsig`` (busybox's and old ones do not)."""
    path = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if path is None:
        return None
    probe = subprocess.run([path, "--pdeathsig", "TERM", "--", "true"], capture_output=True, check=False)
    return path if probe.returncode == 0 else None


def _dying_with_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` run so that the kernel sends it SIGTERM when the thread that spawned it exits (the process
    dying, even by SIGKILL, included); as is, with a warning, where no usable ``setpriv`` is found."""
    setpriv = _setpriv()
    if setpriv is None:
        log.warning(
            "no setpriv --pdeathsig: children will not die with their parent", extra={"argv0": argv[0]}
        )
        return list(argv)
    return [setpriv, "--pdeathsig", "TERM", "--", *argv]


def as_user(user: str | None) -> dict[str, Any]:
    """``subprocess`` arguments that run a child as ``user`` with that user's group and no other.

    Switching only the uid would keep root's group (gid 0) and its supplementary groups, giving the child
    the root group's access to files and directories.
    """
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    user: str | None = None,
    die_with_parent: bool = True,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group, output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    output = open(log_path, "ab")  # noqa: SIM115 - the child owns the handle for its lifetime
    try:
        return subprocess.Popen(
            _dying_with_parent(argv) if die_with_parent else list(argv),
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            **as_user(user),
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        output.close()


def stop(proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    """Send ``sig``, wait up to ``timeout`` seconds, then kill; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()
