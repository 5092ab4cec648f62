"""Background housekeeping a service runs for as long as it serves: a job every few seconds, and batched
deletions repeated until nothing is left. Start them with ``Resources.spawn``; they stop when it cancels them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from parapet.kit.timeouts import stray_cancellation

log = logging.getLogger(__name__)


async def every(seconds: float, job: Callable[[], Awaitable[object]], name: str) -> None:
    """Run ``job`` every ``seconds`` until cancelled; a failed run is logged and retried next time.

    A ``CancelledError`` the job raises while this loop is not being cancelled (it awaited something another task
    cancelled) is a failed run too: ending the loop on it stopped the housekeeping for good, and silently, as a
    cancelled task is no failure to ``Resources.spawn``."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except asyncio.CancelledError as cancelled:
            if not stray_cancellation(cancelled):
                raise
            log.warning("%s failed; retrying at the next interval", name, exc_info=True)
        except Exception:
            log.warning("%s failed; retrying at the next interval", name, exc_info=True)


def until_none_left(batch: Callable[[], Awaitable[int]], what: str) -> Callable[[], Awaitable[int]]:
    """A job that runs ``batch`` (a bounded deletion returning how many rows it removed) until it removes none,
    so one transaction never grows with the backlog; logs the total as ``what``."""

    async def run() -> int:
        total = 0
        while (count := await batch()) > 0:
            total += count
        if total:
            log.info("%s deleted", what, extra={"count": total})
        return total

    return run
