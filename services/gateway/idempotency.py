"""Idempotency keys of chat requests: the first call runs, a repeat within the window replays its answer.

The key is each user's own (tenant, subject, key): an answer is replayed only to the caller who asked, never
to another user of the tenant who may read other documents. A row is inserted 'running' before the flow starts
(one statement: of two concurrent calls exactly one inserts), turned 'done' with the answer's events once the
summary is out, and deleted when the call fails, so a retry of a failed call runs again instead of replaying an
error. A 'running' row whose process died is taken over once its lease (the flow's longest run) has passed.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import text

from parapet.gateway.v1 import chat_service_pb2
from parapet.kit.database import Database
from parapet.kit.errors import Aborted, AlreadyExists


def request_hash(
    request: chat_service_pb2.StreamChatRequest | chat_service_pb2.ChatRequest, groups: Iterable[str] = ()
) -> bytes:
    """The same for a StreamChat and a Chat with the same fields (they share field numbers), asked under the same
    document groups: an answer is grounded in what those groups may read, so the same key after the caller's
    groups changed is another request (until 2026-12-06 it replayed citations of documents the caller may no
    longer read, for the key's whole lifetime)."""
    digest = hashlib.sha256(request.SerializeToString(deterministic=True))
    if groups:
        digest.update(b"\0groups\0" + "\0".join(sorted(groups)).encode())
    return digest.digest()


def pack(events: Iterable[chat_service_pb2.StreamChatResponse]) -> bytes:
    parts = []
    for event in events:
        body = event.SerializeToString()
        parts.append(struct.pack(">I", len(body)) + body)
    return b"".join(parts)


def unpack(data: bytes) -> Iterator[chat_service_pb2.StreamChatResponse]:
    offset = 0
    while offset < len(data):
        (size,) = struct.unpack_from(">I", data, offset)
        offset += 4
        yield chat_service_pb2.StreamChatResponse.FromString(data[offset : offset + size])
        offset += size


@dataclass(frozen=True)
class Replay:
    events: tuple[chat_service_pb2.StreamChatResponse, ...]


_CLAIM = text(
    """
    INSERT INTO idempotency AS i (tenant_id, user_id, idempotency_key, request_sha256, request_id, state,
                                  lease_expire_time, expire_time)
    VALUES (:tenant, :user, :key, :hash, :request_id, 'running', now() + :lease, now() + :ttl)
    ON CONFLICT (tenant_id, user_id, idempotency_key) DO UPDATE
        SET request_sha256 = excluded.request_sha256, request_id = excluded.request_id, state = 'running',
            events = NULL, create_time = now(), lease_expire_time = excluded.lease_expire_time,
            expire_time = excluded.expire_time
        WHERE i.expire_time < now() OR (i.state = 'running' AND i.lease_expire_time < now())
    RETURNING request_id
    """
)
_EXISTING = text(
    "SELECT request_sha256, state, events FROM idempotency"
    " WHERE tenant_id = :tenant AND user_id = :user AND idempotency_key = :key"
)
_ONE = "tenant_id = :tenant AND user_id = :user AND idempotency_key = :key AND request_id = :request_id"


class IdempotencyStore:
    def __init__(self, database: Database, *, ttl_seconds: float) -> None:
        self._database = database
        self._ttl = timedelta(seconds=ttl_seconds)

    async def claim(
        self, tenant_id: str, user_id: str, key: str, digest: bytes, request_id: str, *, lease_seconds: float
    ) -> Replay | None:
        """None: this call owns the key and runs. A Replay: the first call's answer. Raises while the first
        call runs (ABORTED REQUEST_IN_PROGRESS) or when the key was used for another request."""
        params = {"tenant": tenant_id, "user": user_id, "key": key, "hash": digest, "request_id": request_id}
        async with self._database.transaction() as session:
            claimed = await session.execute(
                _CLAIM, {**params, "lease": timedelta(seconds=lease_seconds), "ttl": self._ttl}
            )
            if claimed.first() is not None:
                return None
            row = (await session.execute(_EXISTING, params)).one()
        if bytes(row[0]) != digest:
            raise AlreadyExists(
                "this idempotency key was used for a different request (or by this user under other document "
                "groups)",
                reason="IDEMPOTENCY_KEY_REUSED",
                metadata={"idempotency_key": key},
            )
        if row[1] == "running":
            raise Aborted(
                "a request with this idempotency key is still running; retry after it finishes",
                reason="REQUEST_IN_PROGRESS",
                metadata={"idempotency_key": key},
            )
        return Replay(tuple(unpack(bytes(row[2] or b""))))

    async def complete(
        self,
        tenant_id: str,
        user_id: str,
        key: str,
        request_id: str,
        events: Iterable[chat_service_pb2.StreamChatResponse],
    ) -> None:
        async with self._database.transaction() as session:
            await session.execute(
                text(
                    "UPDATE idempotency SET state = 'done', events = :events, expire_time = now() + :ttl "
                    f"WHERE {_ONE}"
                ),
                {
                    "tenant": tenant_id,
                    "user": user_id,
                    "key": key,
                    "request_id": request_id,
                    "events": pack(events),
                    "ttl": self._ttl,
                },
            )

    async def abandon(self, tenant_id: str, user_id: str, key: str, request_id: str) -> None:
        async with self._database.transaction() as session:
            await session.execute(
                text(f"DELETE FROM idempotency WHERE {_ONE}"),
                {"tenant": tenant_id, "user": user_id, "key": key, "request_id": request_id},
            )

    async def delete_user(self, tenant_id: str, user_id: str) -> int:
        """Delete every record of ``user_id`` (a user's erasure); returns how many. A chat of theirs still
        running then stores no answer (complete() finds no row), and a retry runs again."""
        async with self._database.transaction() as session:
            result = await session.execute(
                text("DELETE FROM idempotency WHERE tenant_id = :tenant AND user_id = :user"),
                {"tenant": tenant_id, "user": user_id},
            )
        return int(getattr(result, "rowcount", 0) or 0)

    async def prune(self) -> int:
        async with self._database.transaction() as session:
            result = await session.execute(text("DELETE FROM idempotency WHERE expire_time < now()"))
        return int(getattr(result, "rowcount", 0) or 0)
