"""Waiting with a time limit never swallows a cancellation (the reason parapet.kit.timeouts exists)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

import pytest

from parapet.kit.timeouts import cancel_and_wait, wait_event, within


async def _relay_loop(wake: asyncio.Event, wait: Callable[[asyncio.Event], Awaitable[object]]) -> None:
    while True:  # an outbox relay: publish, then sleep until woken or the interval passed
        await wait(wake)
        wake.clear()


async def _cancelled_as_it_wakes(
    wait: Callable[[asyncio.Event], Awaitable[object]], *, settle: bool = True
) -> bool:
    """Whether a relay loop cancelled in the same tick its wait completed actually stops."""
    wake = asyncio.Event()
    relay = asyncio.create_task(_relay_loop(wake, wait))
    await asyncio.sleep(0.01)
    wake.set()
    if settle:
        await asyncio.sleep(0)  # the inner wait (wait_for's own task) completes...
    relay.cancel()  # ...and the shutdown cancels the loop before it resumed
    done, _ = await asyncio.wait([relay], timeout=0.5)
    if not done:
        relay.cancel()  # asyncio.wait_for lost the first cancel; stop the loop for good
        await asyncio.gather(relay, return_exceptions=True)
    return relay in done and relay.cancelled()


async def test_wait_event_lets_a_cancel_through_when_it_arrives_as_the_wait_completes() -> None:
    assert await _cancelled_as_it_wakes(lambda wake: wait_event(wake, 10))
    assert await _cancelled_as_it_wakes(lambda wake: wait_event(wake, 10), settle=False)


async def test_asyncio_wait_for_is_what_loses_it_on_this_python() -> None:
    # The failure this module prevents, shown on the interpreter we run; Python 3.12 fixed wait_for.
    lost = not await _cancelled_as_it_wakes(lambda wake: asyncio.wait_for(wake.wait(), 10))  # noqa: TID251
    assert lost == (sys.version_info < (3, 12))


async def test_wait_event_reports_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert not await wait_event(event, 0.01)
    event.set()
    assert await wait_event(event, 10)


async def test_within_returns_the_result_or_raises_timeout_error() -> None:
    assert await within(1, asyncio.sleep(0, result=7)) == 7
    assert await within(None, asyncio.sleep(0, result=8)) == 8
    with pytest.raises(TimeoutError):
        await within(0.01, asyncio.sleep(10))


async def test_cancel_and_wait_stops_a_task_that_swallowed_the_first_cancel() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # what a library's wait_for does on 3.11: the loop goes on

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await within(5, cancel_and_wait(task, recancel_seconds=0.05))
    assert task.cancelled() and swallowed == 1
