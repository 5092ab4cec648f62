"""Stream items that are already waiting, together: fewer messages under backpressure, no delay ever added.

Every message of a Python gRPC stream costs a fixed amount of CPU and a trip through grpc's poller thread (about
a quarter of a millisecond here, more than a text delta's own work). When a source produces faster than the
stream can send (a provider's burst of buffered chunks, a cached answer), sending each item alone makes the
whole answer wait on that per-message cost. :func:`coalesced` reads the source in a task of its own while the
consumer is busy sending; whatever piled up meanwhile is handed to ``merge`` at once, which may combine
neighbours (text deltas into one delta). An item that arrives while the consumer is idle goes out at once,
alone: the first token is never held back, and a source that produces slower than the stream sends (a model
streaming at its own pace) gets exactly one message per item, as without this.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

_DEFAULT_LIMIT = 256  # items held before the reader waits for the consumer (the source's own flow control)
_SLICE = 0.001  # the longest the reader runs without yielding to the event loop, in seconds


async def coalesced(
    source: AsyncIterable[T],
    merge: Callable[[list[T]], list[T]],
    *,
    lead: int = 0,
    limit: int = _DEFAULT_LIMIT,
) -> AsyncGenerator[T, None]:
    """The items of ``source`` in order; those that were waiting together pass through ``merge`` first.

    ``merge`` gets two or more items, in order, and returns what to yield instead (in order; it must keep every
    item's content). The first ``lead`` items are not read ahead: each is read only once the one before it was
    consumed (sent), for a consumer whose receiver acts only on a couple of items together. An error of the source
    (any exception, a ``CancelledError`` of its own included) is raised after every item that came before it was
    yielded. Closing this generator (or cancelling its consumer) stops the reading task and closes the source.
    """
    if lead < 0 or limit < 1:
        raise ValueError(f"coalesced needs lead >= 0 and limit >= 1, got lead={lead}, limit={limit}")
    reader: _Reader[T] = _Reader(source, lead, limit)
    task = asyncio.ensure_future(reader.run())
    try:
        while True:
            items = await reader.take()
            if not items:
                break
            for item in items if len(items) == 1 else merge(items):
                yield item
        if reader.failure is not None:
            raise reader.failure
    finally:
        if not task.done():
            reader.stop()
            task.cancel()
            # Waited for without raising its outcome: the reader's cancellation is not ours to raise, and a
            # cancellation of this task while it waits still propagates from here.
            await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:  # only closing the source can fail here
            log.warning("closing a coalesced stream's source failed", exc_info=task.exception())


class _Reader(Generic[T]):
    """The source read ahead of its consumer, up to ``limit`` items."""

    def __init__(self, source: AsyncIterable[T], lead: int, limit: int) -> None:
        self._source = aiter(source)
        self._lead = lead
        self._limit = limit
        self._items: list[T] = []
        self._ready = asyncio.Event()  # items are waiting, or the source ended
        self._taken = asyncio.Event()  # the consumer emptied the buffer
        self._ended = False
        self._waiting = False  # the consumer is idle, waiting for an item
        self._idle = asyncio.Event()  # set when the consumer comes back for more
        self._stopping = False  # the consumer is gone: end without reading on
        self.failure: BaseException | None = None

    def stop(self) -> None:
        """The consumer is gone: every wait of the reader ends, and it reads no further item."""
        self._stopping = True
        self._idle.set()
        self._taken.set()

    async def run(self) -> None:
        slice_start = time.perf_counter()
        read = 0
        try:
            async for item in self._source:
                if self._stopping:  # a source that ignored the cancellation reads no further
                    return
                self._items.append(item)
                self._ready.set()
                read += 1
                if read <= self._lead:
                    while (self._items or not self._waiting) and not self._stopping:  # taken and sent
                        self._idle.clear()
                        await self._idle.wait()
                    slice_start = time.perf_counter()
                    continue
                # A source whose items are already buffered never suspends by itself. Yield to the loop when
                # the consumer is idle, so it sends this item now (the first one is never held back to be
                # merged), and otherwise at least every _SLICE, so a long burst neither holds the pile back
                # from a consumer whose send completed nor stalls the loop's other streams.
                if self._waiting or time.perf_counter() - slice_start > _SLICE:
                    await asyncio.sleep(0)
                    slice_start = time.perf_counter()
                while len(self._items) >= self._limit and not self._stopping:
                    self._taken.clear()
                    await self._taken.wait()
                    slice_start = time.perf_counter()
        except asyncio.CancelledError as error:
            if self._stopping:
                raise
            self.failure = error  # the source's own: the consumer raises it, as it would have unread
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # the consumer raises it, after the items before it
            self.failure = error
        finally:
            self._ended = True
            self._ready.set()
            close = getattr(self._source, "aclose", None)
            if close is not None:  # an async generator left suspended when the consumer stopped early
                await close()

    async def take(self) -> list[T]:
        """Every item waiting (at least one), or none once the source ended."""
        while not self._items and not self._ended:
            self._ready.clear()
            self._waiting = True
            self._idle.set()
            await self._ready.wait()
            self._waiting = False
        items, self._items = self._items, []
        self._taken.set()
        return items
