"""Child processes that die with their parent and stop within a bound."""

import contextlib
import ctypes
import os
import pwd
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
# Resolved once, in the parent: between fork and exec a child of a threaded process (gRPC runs threads)
# may only do async-signal-safe work, and loading a library is not.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent_of(parent_pid: int) -> Callable[[], None] | None:
    """A pre-exec hook: the kernel sends SIGTERM to the child when ``parent_pid`` dies, even by SIGKILL."""
    if _PRCTL is None:
        return None
    prctl = _PRCTL

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        # The parent may have died between fork and prctl, before the death signal was armed.
        if os.getppid() != parent_pid:
            os._exit(1)

    return hook


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
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns the handle for its lifetime
    preexec = _die_with_parent_of(os.getpid()) if die_with_parent else None
    try:
        return subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            **as_user(user),
            cwd=cwd,
            preexec_fn=preexec,
            start_new_session=True,
        )
    finally:
        log.close()


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
