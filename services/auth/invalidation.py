"""Pushes every committed change of a tenant to every replica's caches: PostgreSQL LISTEN/NOTIFY.

Writers call ``pg_notify('parapet_auth', tenant_id)`` inside the changing transaction, so the notification
goes out exactly when the change becomes visible, never before and never for a rolled-back change. Each
replica keeps one LISTEN connection; when it drops, notifications may have been missed, so the caches are
cleared as soon as it listens again (and their short TTL bounds staleness in between).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import psycopg
from sqlalchemy.engine import make_url

from services.auth.store import NOTIFY_CHANNEL

log = logging.getLogger(__name__)


def libpq_url(sqlalchemy_url: str) -> str:
    """The psycopg conninfo of a ``postgresql+psycopg://`` URL."""
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


class InvalidationListener:
    def __init__(
        self,
        database_url: str,
        on_tenant: Sequence[Callable[[str], None]],
        on_reset: Sequence[Callable[[], None]],
        *,
        retry_seconds: float = 0.5,
        channel: str = NOTIFY_CHANNEL,
    ) -> None:
        """``channel`` other than auth's own lets other services reuse this listener for their signals."""
        self._conninfo = libpq_url(database_url)
        self._channel = channel
        self._on_tenant = on_tenant
        self._on_reset = on_reset
        self._retry = retry_seconds
        self.listening = asyncio.Event()

    def _reset(self) -> None:
        for callback in self._on_reset:
            callback()

    async def run(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=5
                ) as conn:
                    await conn.execute(f"LISTEN {self._channel}")
                    self._reset()  # whatever happened while not listening is unknown
                    self.listening.set()
                    async for notice in conn.notifies():
                        for callback in self._on_tenant:
                            callback(notice.payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("cache invalidation listener lost its connection; retrying", exc_info=True)
            # The caches are cleared once listening again, not now: while the database is unreachable no
            # change can commit, and warm entries keep authenticating through a database blip.
            self.listening.clear()
            await asyncio.sleep(self._retry)
