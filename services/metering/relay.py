"""The outbox relay: publishes unsent UsageEvents to JetStream and marks them sent only on the server's ack.

Runs in every replica; ``FOR UPDATE SKIP LOCKED`` gives each batch to one relay at a time. A publish that gets
no ack (NATS down, timeout) leaves its row unsent for the next round, so an outage delays events and loses
none. A crash between ack and mark republishes the same event id: JetStream's duplicate window drops it and
consumers deduplicate by event id anyway (docs/usage-events.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from nats.js.api import PubAck
from nats.js.errors import NoStreamResponseError
from sqlalchemy import text

from parapet.kit import metrics
from parapet.kit.bus import MSG_ID_HEADER, Bus
from parapet.kit.database import Database
from parapet.kit.timeouts import wait_event

log = logging.getLogger(__name__)

# Unsent events, the usage_outbox_pending gauge (served by the partial index outbox_unsent).
_PENDING = "SELECT count(*) FROM outbox WHERE sent_time IS NULL"
# One batch of unsent rows, oldest first, served by outbox_unsent; rows another relay holds are skipped.
UNSENT_BATCH = text(
    f"""
    SELECT id, event_id, subject, payload, headers, ({_PENDING}) FROM outbox
    WHERE sent_time IS NULL ORDER BY id LIMIT :batch FOR UPDATE SKIP LOCKED
    """
)


class OutboxRelay:
    def __init__(
        self, database: Database, bus: Bus, *, batch_size: int, interval: float, ack_timeout: float
    ) -> None:
        self._database = database
        self._bus = bus
        self._batch_size = batch_size
        self._interval = interval
        self._ack_timeout = ack_timeout
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Called after a settlement commits, so its event leaves without waiting for the next poll."""
        self._wake.set()

    async def publish_batch(self) -> int:
        """Publish up to one batch; returns how many were acknowledged (and are now marked sent)."""
        acked, missing = await self._publish_batch()
        if acked:
            metrics.record_usage_published(acked)  # after the commit that marked them sent
        if missing is not None:
            # No stream took them: NATS came back without it (its store lost). Declared again (the kit's
            # ``Bus.restore_stream``, which ``Bus.publish`` uses too), they go out in the next round.
            await self._bus.restore_stream(missing)
        return acked

    async def _publish_batch(self) -> tuple[int, str | None]:
        """Publish and mark one batch; returns the count acknowledged and a subject no stream took, if any."""
        async with self._database.transaction() as session:
            rows = (await session.execute(UNSENT_BATCH, {"batch": self._batch_size})).all()
            if not rows:
                # Nothing this relay may take; rows other relays hold are still waiting (a stalled NATS
                # keeps them there), so the gauge keeps counting them rather than dropping to 0.
                metrics.set_usage_outbox_pending(int((await session.execute(text(_PENDING))).scalar_one()))
                return 0, None
            results = await self._publish(rows)
            acked = [
                row[0]
                for row, result in zip(rows, results, strict=True)
                if not isinstance(result, BaseException)
            ]
            failed = len(rows) - len(acked)
            if failed:
                first = next(r for r in results if isinstance(r, BaseException))
                log.warning(
                    "outbox: %d of %d events not acknowledged, retrying later: %r", failed, len(rows), first
                )
            if acked:
                await session.execute(
                    text("UPDATE outbox SET sent_time = now() WHERE id = ANY(CAST(:ids AS bigint[]))"),
                    {"ids": acked},
                )
            # Counted by the SELECT above, before this batch: every unsent row, held by any relay or not.
            metrics.set_usage_outbox_pending(int(rows[0][5]) - len(acked))
            missing = next(
                (
                    row[2]
                    for row, result in zip(rows, results, strict=True)
                    if isinstance(result, NoStreamResponseError)
                ),
                None,
            )
            return len(acked), missing

    async def _publish(self, rows: Sequence[Sequence[Any]]) -> list[object]:
        """Publish every row, then wait (up to the ack timeout) for all of JetStream's acks at once.

        ``publish_async`` shares one reply subscription for all acks instead of a request per message:
        several times the throughput of awaiting each publish. A row whose ack does not come in time gets
        a TimeoutError and stays unsent.
        """
        futures: list[asyncio.Future[PubAck]] = []
        stopped: Exception | None = None  # why the rows after ``futures`` were not published
        try:
            client, jetstream = self._bus.client, self._bus.jetstream
            # No wait_stall: with one, every publish would yield to the event loop and the client would
            # flush each message in its own write; without, the batch goes out in a few large writes. The
            # timeout bounds a stall on the client's limit of outstanding acks instead.
            async with asyncio.timeout(self._ack_timeout):
                for _, event_id, subject, payload, headers, _pending in rows:
                    if not client.is_connected:
                        # Never publish into nats-py's reconnect buffer: once it is full, publish_async
                        # raises after taking a slot of the client's pending-ack semaphore (4,000) that
                        # nothing gives back. Until 2026-12-06 every round of an outage took one, and after
                        # a minute or two of outage under load (every settlement wakes the relay) it could
                        # publish nothing ever again, NATS back or not, until metering restarted. A
                        # buffered copy gains nothing either: its ack would come after the round gave up.
                        raise ConnectionError("NATS is not connected")
                    futures.append(
                        await jetstream.publish_async(
                            subject, bytes(payload), headers={**headers, MSG_ID_HEADER: str(event_id)}
                        )
                    )
        except Exception as error:  # NATS down, or too many acks outstanding: the rest waits for next round
            stopped = error
            log.debug("outbox publish stopped early: %r", error)
        done, pending = await asyncio.wait(futures, timeout=self._ack_timeout) if futures else (set(), set())
        for future in pending:
            future.cancel()  # releases its slot in the client's pending-ack semaphore
        results: list[object] = []
        for index in range(len(rows)):
            if index >= len(futures):
                assert (
                    stopped is not None
                )  # rows are left unpublished only when publishing stopped on an error
                results.append(stopped)
            elif futures[index] in pending:
                results.append(TimeoutError("no ack from JetStream in time"))
            elif (exception := futures[index].exception()) is not None:
                results.append(exception)
            else:
                results.append(futures[index].result())
        assert len(done) + len(pending) == len(futures)
        return results

    async def run(self) -> None:
        """Drain the outbox forever: back-to-back while batches are full, else on wake-up or every interval."""
        while True:
            # Cleared before the round, not after: a settlement that commits while the round runs leaves the
            # wake-up set, so its event goes out in the next round instead of after a whole interval.
            self._wake.clear()
            try:
                published = await self.publish_batch()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay round failed; retrying")
                published = 0
            if published >= self._batch_size:
                continue
            await wait_event(self._wake, self._interval)
