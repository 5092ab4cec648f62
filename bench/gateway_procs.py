"""Processes of the gateway benchmark: starting children that announce themselves, and reading the memory and
CPU time of a whole process tree from /proc (Linux), sampled while a run is under way."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from parapet.kit import timeouts

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    # The command name may contain spaces and parentheses: the fields start after the last ')'.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
    return children


def tree(root: int) -> list[int]:
    """``root`` and every process below it now."""
    children = children_map()
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (0 when it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError):
        return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far (0 when it is gone)."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


@dataclass
class ProcessGroup:
    """A named set of processes whose memory and CPU are reported together (say, the Parapet services)."""

    name: str
    pids: Callable[[], Iterable[int]]  # asked afresh at each sample: workers may come and go
    member: Callable[[int], str] = lambda pid: "all"  # which part of the group a process is, for breakdowns

    def rss(self) -> int:
        return sum(rss_bytes(pid) for pid in self.pids())

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def cpu_by_member(self) -> dict[str, float]:
        """CPU seconds so far, summed per member (a service, LiteLLM's workers...)."""
        used: dict[str, float] = {}
        for pid in self.pids():
            name = self.member(pid)
            used[name] = used.get(name, 0.0) + cpu_seconds(pid)
        return used


@dataclass
class MemorySampler:
    """Samples the summed RSS of ``group`` every ``interval`` seconds while it runs (``async with``)."""

    group: ProcessGroup
    interval: float = 0.5
    series: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, bytes)
    _task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        started = time.monotonic()
        while True:
            self.series.append((time.monotonic() - started, self.group.rss()))
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> MemorySampler:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.series.append((self.series[-1][0] if self.series else 0.0, self.group.rss()))

    @property
    def peak(self) -> int:
        return max(value for _, value in self.series)


@dataclass
class Child:
    """A child process started by :func:`announced_child`: its pid and the JSON line it announced itself with."""

    process: asyncio.subprocess.Process
    announcement: dict[str, Any]

    @property
    def pid(self) -> int:
        return self.process.pid


def _append(log: Path | None) -> IO[bytes]:
    return open(log or os.devnull, "ab")


async def spawn(
    argv: Sequence[str],
    *,
    log: Path | None,
    env: dict[str, str] | None = None,
    stdin: int | None = None,
    stdout: int | None = None,
) -> asyncio.subprocess.Process:
    """Start ``argv`` in a session of its own (so :func:`stop` can reach what it starts), its stderr (and its
    stdout unless piped) appended to ``log``."""
    with _append(log) as output:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=stdin,
            stdout=stdout if stdout is not None else output,
            stderr=output,
            env=env,
            start_new_session=True,
        )


@asynccontextmanager
async def announced_child(*argv: str, log: Path | None = None, within: float = 60.0) -> AsyncIterator[Child]:
    """Run ``argv`` until the block ends; it must print one JSON line on stdout when it is ready."""
    process = await spawn(argv, log=log, stdout=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = await timeouts.within(within, process.stdout.readline())
        if not line:
            raise RuntimeError(f"{argv[:4]} exited with {await process.wait()} before announcing itself")
        yield Child(process, json.loads(line))
    finally:
        await stop(process)


async def stop(process: asyncio.subprocess.Process, grace: float = 20.0) -> None:
    """SIGTERM to ``process`` (a launcher stops its own children), SIGKILL to its whole session after
    ``grace``; then SIGKILL to whatever of that session (it was started in one of its own) outlived it."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await timeouts.within(grace, process.wait())
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def run_json(argv: list[str], payload: dict[str, Any], within: float, log: Path) -> dict[str, Any]:
    """Run a process that reads ``payload`` as JSON on stdin and answers one JSON document on stdout."""
    process = await spawn(argv, log=log, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        out, _ = await timeouts.within(within, process.communicate(json.dumps(payload).encode()))
    finally:
        await stop(process, grace=5.0)
    if process.returncode != 0:
        raise RuntimeError(f"{argv} exited with {process.returncode}; see {log}")
    result: dict[str, Any] = json.loads(out)
    return result


PYTHON = sys.executable


async def wait_settled(group: ProcessGroup, *, window: float = 1.0, within: float = 60.0) -> None:
    """Wait until ``group``'s CPU use has settled: two consecutive ``window``s within 5 % of a core of each other
    and under half a core. A server that answers its health check may still be warming up (more workers
    importing, caches filling), and a run's tail may still be settling; either would steal the CPU of the next
    measurement. Settled, not idle: Parapet's eight services use some CPU at rest (relays, sweepers)."""
    deadline = time.monotonic() + within
    previous = None
    while time.monotonic() < deadline:
        before = group.cpu()
        await asyncio.sleep(window)
        rate = (group.cpu() - before) / window
        if previous is not None and rate < 0.5 and abs(rate - previous) < 0.05:
            return
        previous = rate
