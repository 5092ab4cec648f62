"""Settlements and audit records delivered after the answer, durably: directly when the dependency is up, else
through the gateway's outbox table, which a relay retries until delivered.

Settlement needs the caller's identity (metering takes the tenant, user and API key from the token). The
token stored with an outbox row expires within minutes; when it has, the relay uses the newest token seen
for the same tenant, subject and API key (every request refreshes it), and otherwise keeps the row until
one is seen. Audit records need no token: they go to the AUDIT JetStream stream, de-duplicated by record id.

Each relay round reports the outbox's backlog by kind and what it delivered (``parapet_gateway_outbox_pending``,
``parapet_gateway_outbox_delivered_total``), for the stalled-delivery alerts.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import grpc.aio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.audit.v1 import audit_record_pb2
from parapet.events import audit as audit_events
from parapet.kit import metrics
from parapet.kit.bus import Bus
from parapet.kit.database import Database
from parapet.kit.timeouts import wait_event
from parapet.metering.v1 import metering_service_pb2
from services.audit.canonical import MAX_RECORD_BYTES
from services.gateway import records
from services.gateway.caller import Caller
from services.gateway.errors import is_down
from services.gateway.idempotency import IdempotencyStore
from services.gateway.peers import Peers

log = logging.getLogger(__name__)

SOURCE = "/parapet/gateway"
_BATCH = 100
_MAX_BACKOFF = 60.0
_TOKENS = 10_000  # newest token per (tenant, subject, api key), bounded
_HEADERS_ROOM = 4096  # NATS counts a message's headers (CloudEvents attributes, its id) against its limit
KINDS = ("audit", "settlement")  # the outbox's kinds (its CHECK constraint)
_DUE = (
    "SELECT outbox_id, kind, tenant_id, payload, token, subject, api_key_id, attempts "
    "FROM outbox WHERE sent_time IS NULL AND next_attempt_time <= now() "
    "ORDER BY next_attempt_time LIMIT :n FOR UPDATE SKIP LOCKED"
)
# Every undelivered row, due or backing off, held by any relay or not: the backlog gauge.
_BACKLOG = "SELECT kind, count(*) FROM outbox WHERE sent_time IS NULL GROUP BY kind"


class Deliveries:
    def __init__(
        self,
        database: Database,
        bus: Bus,
        peers: Peers,
        idempotency: IdempotencyStore,
        *,
        interval: float,
        timeout: float,
    ) -> None:
        self._database = database
        self._bus = bus
        self._peers = peers
        self._idempotency = idempotency
        self._interval = interval
        self._timeout = timeout
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}
        self.wake = asyncio.Event()

    def _remember(self, caller: Caller) -> None:
        p = caller.principal
        self._tokens[(p.tenant_id, p.subject, p.api_key_id)] = (caller.token, caller.expire_time)
        if len(self._tokens) > _TOKENS:
            self._tokens.pop(next(iter(self._tokens)))

    async def settle(self, caller: Caller, request: metering_service_pb2.SettleRequest) -> bool:
        """Settle now, or queue it; True when metering accepted it now."""
        self._remember(caller)
        try:
            await self._peers.metering.stub.Settle(
                request, metadata=caller.auth_metadata(), timeout=self._timeout
            )
            return True
        except grpc.aio.AioRpcError as error:
            if not is_down(error) and error.code() != grpc.StatusCode.UNAUTHENTICATED:
                # Metering refused the settlement itself (a conflict with an earlier one): retrying cannot
                # help, and the earlier settlement stands.
                log.error(
                    "settlement refused", extra={"request_id": request.request_id, "code": error.code().name}
                )
                return False
        p = caller.principal
        await self._store(
            "settlement", p.tenant_id, request.SerializeToString(), caller.token, p.subject, p.api_key_id
        )
        return False

    async def release(self, caller: Caller, reservation_id: str, reason: str) -> None:
        """Free a reservation nothing was spent on; if metering is down it expires by itself."""
        try:
            await self._peers.metering.stub.Release(
                metering_service_pb2.ReleaseRequest(reservation_id=reservation_id, reason=reason),
                metadata=caller.auth_metadata(),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError:
            log.warning(
                "release failed; the reservation will expire", extra={"reservation_id": reservation_id}
            )

    def _fitted(self, record: audit_record_pb2.AuditRecord) -> audit_record_pb2.AuditRecord:
        """The record as it can be published: its bodies hashed when it is larger than a NATS message (the
        server's limit, from its INFO) or an audit record may be (records.fitted). Before the bus's first
        connection the server's limit is unknown: fitted to the audit record's own, and again at delivery."""
        server_limit = self._bus.max_payload
        limit = min(server_limit or MAX_RECORD_BYTES, MAX_RECORD_BYTES) - _HEADERS_ROOM
        fitted = records.fitted(record, limit)
        if fitted is not record:
            log.warning(
                "audit record too large to publish; its bodies are kept as hashes only",
                extra={"record_id": record.record_id, "bytes": record.ByteSize(), "limit": limit},
            )
        return fitted

    async def audit(self, record: audit_record_pb2.AuditRecord) -> bool:
        record = self._fitted(record)
        try:
            await audit_events.publish(self._bus, record, source=SOURCE)
            return True
        except Exception:
            log.warning("audit publish failed; queued in the outbox", extra={"record_id": record.record_id})
        await self._store("audit", record.tenant_id, record.SerializeToString(deterministic=True), "", "", "")
        return False

    async def _store(
        self, kind: str, tenant_id: str, payload: bytes, token: str, subject: str, api_key_id: str
    ) -> None:
        async with self._database.transaction() as session:
            await session.execute(
                text(
                    "INSERT INTO outbox (outbox_id, kind, tenant_id, payload, token, subject, api_key_id) "
                    "VALUES (:id, :kind, :tenant, :payload, :token, :subject, :key)"
                ),
                {
                    "id": uuid.uuid4(),
                    "kind": kind,
                    "tenant": tenant_id,
                    "payload": payload,
                    "token": token,
                    "subject": subject,
                    "key": api_key_id,
                },
            )
        self.wake.set()

    async def _deliver(
        self, kind: str, tenant_id: str, payload: bytes, token: str, subject: str, key: str
    ) -> bool:
        if kind == "audit":
            # Fitted here too: rows queued before records were fitted could never be published.
            record = self._fitted(audit_record_pb2.AuditRecord.FromString(payload))
            await audit_events.publish(self._bus, record, source=SOURCE)
            return True
        newest = self._tokens.get((tenant_id, subject, key))
        if newest is not None and newest[1] > time.time() + 5:
            token = newest[0]
        try:
            await self._peers.metering.stub.Settle(
                metering_service_pb2.SettleRequest.FromString(payload),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            if is_down(error) or error.code() == grpc.StatusCode.UNAUTHENTICATED:
                return False
            log.error("queued settlement refused; dropped", extra={"code": error.code().name})
        return True

    async def relay_once(self) -> int:
        """Deliver due rows; returns how many were delivered (or definitively refused)."""
        async with self._database.transaction() as session:
            rows = (await session.execute(text(_DUE), {"n": _BATCH})).all()
            done = [row for row in rows if await self._attempt(session, row)]
            if done:
                # A sent row keeps its bookkeeping for a day, not its content: an audit record's prompt and
                # answer (which body retention and Erase must reach, in the audit service only) and a
                # settlement's caller token go at once.
                await session.execute(
                    text(
                        "UPDATE outbox SET sent_time = now(), payload = ''::bytea, token = ''"
                        " WHERE outbox_id = ANY(:ids)"
                    ),
                    {"ids": [row[0] for row in done]},
                )
            # Counted after this round's own updates, so the gauge already leaves out what it delivered.
            backlog = {kind: count for kind, count in (await session.execute(text(_BACKLOG))).all()}
        # After the commit that marked them sent. Every replica reports the whole outbox (aggregate with max).
        delivered = Counter(row[1] for row in done)
        for kind in KINDS:
            metrics.record_gateway_outbox_delivered(kind, delivered[kind])
            metrics.set_gateway_outbox_pending(kind, backlog.get(kind, 0))
        return len(done)

    async def _attempt(self, session: AsyncSession, row: Sequence[Any]) -> bool:
        """Deliver one row; when that fails, back it off (exponentially, capped) and return False."""
        try:
            if await self._deliver(row[1], row[2], bytes(row[3]), row[4], row[5], row[6]):
                return True
        except Exception:
            pass  # NATS or metering unreachable: retried after the backoff
        backoff = min(_MAX_BACKOFF, self._interval * 2 ** min(row[7], 10))
        await session.execute(
            text(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_time = now() + :b "
                "WHERE outbox_id = :id"
            ),
            {"b": timedelta(seconds=backoff), "id": row[0]},
        )
        return False

    async def run(self) -> None:
        last_prune = 0.0
        while True:
            try:
                while await self.relay_once() == _BATCH:
                    pass
                if time.monotonic() - last_prune >= 60.0:
                    last_prune = time.monotonic()
                    async with self._database.transaction() as session:
                        await session.execute(
                            text("DELETE FROM outbox WHERE sent_time < now() - interval '1 day'")
                        )
                    await self._idempotency.prune()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("gateway outbox relay failed; retrying", exc_info=True)
            self.wake.clear()
            await wait_event(self.wake, self._interval)
