"""The event loop a service process runs on: uvloop when it is installed, else asyncio's own.

Measured by ``python -m bench kit_roundtrip`` (docs/benchmarks.md): a kit call with the identity check costs
the server about 14% less CPU on uvloop than on asyncio's own loop (0.184 against 0.213 ms per call, 64 in
flight); grpc.aio works on any asyncio loop. Imports only asyncio and uvloop, so a command that does not
serve pays nothing for the kit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor when uvloop is installed, else None (asyncio's default loop)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover (a dependency; absent only in unusual installs)
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop :func:`loop_factory` chooses."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
