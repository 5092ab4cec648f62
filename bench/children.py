"""The child processes a benchmark measures: started, pinned, timed and stopped one way.

A server child of these benchmarks prints one JSON line (its port, its base URL) when it is ready, and stops
when its stdin closes; the load generator pins itself and the child to different CPUs so that the child's CPU
time per call is its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from typing import Any

from bench.gateway_procs import cpu_seconds
from parapet.kit import timeouts

__all__ = ["cpu_seconds", "pin", "start_child", "stop_child"]


def pin(cpu: int) -> None:
    """Run this process on ``cpu`` only (when the machine has it)."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > cpu:
        os.sched_setaffinity(0, {cpu})


async def start_child(*argv: str) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    """``python *argv`` with pipes on stdin and stdout, and the JSON line it announces itself with."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        announcement: dict[str, Any] = json.loads(await process.stdout.readline())
    except BaseException:
        await stop_child(process, stdin_grace=0)
        raise
    return process, announcement


async def stop_child(process: asyncio.subprocess.Process, *, stdin_grace: float = 30.0) -> None:
    """Stop a child: close its stdin and wait up to ``stdin_grace``; then SIGTERM (0: at once, for a child
    that does not watch stdin) and 5 s; then SIGKILL. Never leaves the process running."""
    if process.stdin is not None:
        process.stdin.close()
    if await _exited(process, stdin_grace):
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    if await _exited(process, 5.0):
        return
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await _exited(process, 5.0)


async def _exited(process: asyncio.subprocess.Process, seconds: float) -> bool:
    # Bounded: wait() also waits for the pipes, which a grandchild may still hold open after the kill.
    with contextlib.suppress(TimeoutError):
        await timeouts.within(seconds, process.wait())
    return process.returncode is not None
