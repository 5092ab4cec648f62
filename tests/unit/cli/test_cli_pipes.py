"""Output into a pipe whose reader is gone (``parapet status | head -1``): exit 141 as shells report SIGPIPE, no
traceback. Each case runs the command as its own process with a stdout whose read end is already closed, so
its first write fails every time (no race with a real ``head``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.e2e.support import REPO

# Nothing listens here on a test machine (the e2e tests use the same range as "unreachable").
UNREACHABLE_BASE_PORT = "1100"


def run_into_closed_pipe(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARAPET_")}
        return subprocess.run(
            [sys.executable, "-m", "parapet.cli", *argv],
            input=stdin,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
            timeout=60,
        )
    finally:
        os.close(write_end)


# `status` runs outside failures.run (as a conversation of `chat` does, whose answers need a whole suite: a
# piped conversation writes nothing to stdout before its first answer), so main() is what catches it.
@pytest.mark.parametrize(("argv", "stdin"), [(["status", "--base-port", UNREACHABLE_BASE_PORT], "")])
def test_a_closed_stdout_exits_141_without_a_traceback(argv: list[str], stdin: str) -> None:
    done = run_into_closed_pipe(*argv, stdin=stdin)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 141, done.stderr
