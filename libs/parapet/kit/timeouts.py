"""Waiting with a time limit, without losing a cancellation: use these, never ``asyncio.wait_for``.

On Python 3.11, ``asyncio.wait_for`` swallows the caller's cancellation when it arrives as the inner wait
finishes: it returns the inner result and the task carries on. A background loop built on it (an outbox
relay's ``wait_for(wake.wait(), interval)``) then ignores its shutdown's ``cancel()``, and the shutdown's
``gather`` of the task waits forever: seen in CI on 2026-12-05, a retrieval server's stop hung in 7 of 80
repeated starts. ``asyncio.timeout`` counts cancellations (``Task.uncancel``) and lets the caller's through.
Ruff's banned-api rule (pyproject.toml) keeps ``asyncio.wait_for`` out of our code; libraries still use it
(nats-py's request/reply, under every JetStream publish), so stopping a task cancels until it ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
#: How long a cancelled task gets to end before it is cancelled again: long enough for a clean-up it shields
#: (a job worker giving its item back waits up to 4 s), short enough that a lost cancel costs little.
RECANCEL_SECONDS = 5.0


async def within(seconds: float | None, awaitable: Awaitable[T]) -> T:
    """``await awaitable``, raising ``TimeoutError`` (and cancelling it) after ``seconds``; None = no limit."""
    async with asyncio.timeout(seconds):
        return await awaitable


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Waits until ``event`` is set or ``seconds`` pass: whether it was set (a relay's wake-up or poll)."""
    try:
        await within(seconds, event.wait())
    except TimeoutError:
        return False
    return True


async def cancel_and_wait(task: asyncio.Future[Any], *, recancel_seconds: float = RECANCEL_SECONDS) -> None:
    """Cancels ``task`` and waits until it ended, cancelling again every ``recancel_seconds`` while it goes on
    (logged each time): a library that swallowed a cancellation (``asyncio.wait_for`` inside it, on Python
    3.11) must not keep it running. A task that never ends keeps its caller here; the process's bounded
    stop (``parapet.kit.server``) is the limit. Whatever the task ended with is retrieved, not raised."""
    task.cancel()
    while not task.done():
        await asyncio.wait([task], timeout=recancel_seconds)
        if not task.done():
            log.warning("a task ignored its cancellation: cancelling it again", extra={"task": repr(task)})
            task.cancel()
    if not task.cancelled():
        task.exception()


def stray_cancellation(exc: BaseException) -> bool:
    """A CancelledError although nobody cancelled the running task: it escaped from other work (something
    another task cancelled). The task's own cancellation (grpc cancelling a call's task when the client cancels,
    the deadline passes or the server stops; a loop being stopped) is counted by ``cancelling()``."""
    if not isinstance(exc, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0
