"""One provider call with the engine's timeouts: first token, then idle between events, within the deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from parapet.kit.errors import DeadlineExceeded
from services.inference.config import Timeouts
from services.inference.providers.base import Delta, ProviderError, ProviderEvent

# Kept back from the caller's deadline so the summary and status still reach it in time.
DEADLINE_MARGIN_SECONDS = 0.02


async def timed_events(
    events: AsyncIterator[ProviderEvent], timeouts: Timeouts, deadline: float | None
) -> AsyncIterator[ProviderEvent]:
    """Yield ``events``; raise ProviderError("timeout") on a slow first token or a stalled stream, and
    DeadlineExceeded when the caller's deadline (``time.monotonic()`` clock) comes first."""
    started = time.monotonic()
    first_seen = False
    try:
        while True:
            now = time.monotonic()
            limit = timeouts.idle_seconds if first_seen else timeouts.first_token_seconds - (now - started)
            by_deadline = deadline is not None and deadline - DEADLINE_MARGIN_SECONDS - now < limit
            if by_deadline:
                assert deadline is not None
                limit = deadline - DEADLINE_MARGIN_SECONDS - now
            if limit <= 0:
                raise DeadlineExceeded("the caller's deadline passed while waiting for the model")
            try:
                async with asyncio.timeout(limit):
                    event = await anext(events)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if by_deadline:
                    raise DeadlineExceeded(
                        "the caller's deadline passed while waiting for the model"
                    ) from None
                what = "the next chunk" if first_seen else "the first token"
                raise ProviderError("timeout", f"no {what} in time") from None
            if isinstance(event, Delta):
                first_seen = True
            yield event
    finally:
        await events.aclose()  # type: ignore[attr-defined]
