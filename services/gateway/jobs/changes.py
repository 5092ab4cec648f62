"""Change signals of jobs for WatchJob and the workers: PostgreSQL LISTEN/NOTIFY, fanned out in-process.

Why PostgreSQL and not a NATS subject: the signal is sent by ``pg_notify`` inside the very transaction that
changes the job, so it goes out exactly at commit and never for a rolled-back change. A NATS publish after
the commit could be lost between the two (a process killed in between), leaving a watcher waiting for a
change it will never hear of; here, commit and signal cannot disagree. One LISTEN connection per process
(auth's listener, on our channel) wakes every local waiter of that job; a dropped connection wakes all of
them once it listens again (they re-read), and WatchJob also re-reads on a timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from services.auth.invalidation import InvalidationListener
from services.gateway.jobs.store import NOTIFY_CHANNEL


class JobChanges:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def listener(self, database_url: str) -> InvalidationListener:
        """The LISTEN loop feeding this fan-out (run it as a background task)."""
        return InvalidationListener(
            database_url, on_tenant=(self.changed,), on_reset=(self.wake_all,), channel=NOTIFY_CHANNEL
        )

    @contextmanager
    def subscribe(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set on every change of ``job_id`` while inside; subscribe before reading the job, so a
        change between the read and the wait is not missed."""
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[job_id]

    def changed(self, job_id: str) -> None:
        for event in self._waiters.get(job_id, ()):
            event.set()

    def wake_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()
