"""What every asyncio task awaits, printed shortly before pytest-timeout fails a test.

pytest-timeout dumps the threads' stacks, but a hung asyncio test shows only its event loop idling in
``select``: the waits that matter are in suspended coroutines. This plugin arms a timer a little before
the test's timeout; when it fires, the running loops print each task's await chain (coroutine by
coroutine, down to the future it waits on) to stderr, which pytest shows with the failure.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from collections.abc import Iterator
from types import AsyncGeneratorType, CoroutineType, GeneratorType
from typing import Any

import pytest

#: Seconds before the timeout at which the report is printed: time for the loop to run it.
_LEAD_SECONDS = 3.0


def await_chain(task: asyncio.Task[Any]) -> list[str]:
    """One line per coroutine the task is suspended in, outermost first, then what the innermost awaits."""
    lines: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = (
            getattr(awaited, "cr_frame", None)
            or getattr(awaited, "gi_frame", None)
            or getattr(awaited, "ag_frame", None)
        )
        if isinstance(awaited, CoroutineType | GeneratorType | AsyncGeneratorType) or frame is not None:
            if frame is not None:
                code = frame.f_code
                lines.append(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}")
            awaited = (
                getattr(awaited, "cr_await", None)
                or getattr(awaited, "gi_yieldfrom", None)
                or getattr(awaited, "ag_await", None)
            )
        else:
            lines.append(f"  awaiting {awaited!r}"[:400])
            break
    return lines


def _report(loop: asyncio.AbstractEventLoop) -> None:
    out = sys.stderr
    print(f"+++++ asyncio tasks of {loop!r} before the timeout +++++", file=out)
    for task in asyncio.all_tasks(loop):
        print(f"--- {task.get_name()} (cancel requests pending: {task.cancelling()})", file=out)
        for line in await_chain(task):
            print(line, file=out)
        # The future the task is parked on (a gRPC call's, a lock's...): the chain's end is opaque from C.
        waiter = getattr(task, "_fut_waiter", None)
        print(f"  parked on {waiter!r}"[:400], file=out)
        for child in getattr(waiter, "_children", ()):  # a gather: what it still waits for
            print(f"    gathering {child!r}"[:400], file=out)
    out.flush()


def _running_loops() -> Iterator[asyncio.AbstractEventLoop]:
    # Loops belong to pytest-asyncio's runners; none is reachable from another thread by name.
    for obj in gc.get_objects():
        if isinstance(obj, asyncio.AbstractEventLoop) and obj.is_running():
            yield obj


def _fire() -> None:
    for loop in _running_loops():
        loop.call_soon_threadsafe(_report, loop)


def _timeout_of(item: pytest.Item) -> float:
    """pytest-timeout's timeout for the item: its marker (positional or keyword), else --timeout, else ini."""
    marker = item.get_closest_marker("timeout")
    if marker is not None and (marker.args or "timeout" in marker.kwargs):
        return float(marker.args[0] if marker.args else marker.kwargs["timeout"])
    option = item.config.getoption("timeout", None)
    if option is not None:
        return float(option)
    return float(item.config.getini("timeout") or 0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    # Setup, call and teardown together, as pytest-timeout times them: a hung teardown is reported too.
    timeout = _timeout_of(item)
    timer = threading.Timer(max(timeout - _LEAD_SECONDS, timeout / 2), _fire) if timeout > 0 else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
