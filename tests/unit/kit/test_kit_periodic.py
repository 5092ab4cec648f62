"""Housekeeping loops: a job every interval that survives its own failures, and batched deletions repeated
until a batch removes nothing."""

from __future__ import annotations

import asyncio

import pytest

from parapet.kit import periodic, timeouts


async def test_until_none_left_repeats_batches_until_one_removes_nothing() -> None:
    batches = [1000, 1000, 17, 0, 5]

    async def batch() -> int:
        return batches.pop(0)

    assert await periodic.until_none_left(batch, "rows")() == 2017
    assert batches == [5]  # stopped at the empty batch


async def test_every_runs_its_job_again_after_a_failure_until_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []
    three = asyncio.Event()

    async def job() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("the database is away")
        if len(runs) == 3:
            three.set()

    task = asyncio.create_task(periodic.every(0.01, job, "test job"))
    await timeouts.within(5, three.wait())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runs[:3] == [0, 1, 2]
    assert "test job failed; retrying at the next interval" in caplog.text


async def test_every_survives_a_cancellation_that_was_not_its_own(caplog: pytest.LogCaptureFixture) -> None:
    """A job awaiting something another task cancelled (a shared lookup, a task of its own) raises
    CancelledError although nobody cancelled the loop: a failed run, not the end of the housekeeping."""
    runs: list[int] = []
    two = asyncio.Event()

    async def job() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            shared: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            shared.cancel()  # cancelled by its owner
            await shared
        if len(runs) == 2:
            two.set()

    task = asyncio.create_task(periodic.every(0.01, job, "test job"))
    try:
        await timeouts.within(5, two.wait())
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert runs[:2] == [0, 1]
    assert "test job failed; retrying at the next interval" in caplog.text
