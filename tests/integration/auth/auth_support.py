"""Helpers several auth test modules share: the audit records on a tenant's subject, a log line waited for,
and groups of a given size in a token's claims."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.errors import NotFoundError

from parapet.audit.v1 import audit_record_pb2
from parapet.events.audit import AUDIT_STREAM, subject
from services.auth.bounds import MAX_GROUP_LENGTH, MAX_GROUPS, escaped


async def audit_records(
    nats_url: str, tenant: str, count: int
) -> list[tuple[audit_record_pb2.AuditRecord, dict[str, str]]]:
    """The first ``count`` records on the tenant's subject, read in place: the AUDIT work queue admits no
    consumer beside the audit service's, and no audit service runs here to take them."""
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        found: list[tuple[audit_record_pb2.AuditRecord, dict[str, str]]] = []
        after = 0
        deadline = asyncio.get_running_loop().time() + 10
        while len(found) < count:
            try:
                msg = await js.get_msg(AUDIT_STREAM.name, seq=after + 1, subject=subject(tenant), next=True)
            except NotFoundError:  # not published yet
                assert asyncio.get_running_loop().time() < deadline, f"{len(found)} of {count} records"
                await asyncio.sleep(0.1)
                continue
            assert msg.seq is not None and msg.data is not None
            after = msg.seq
            found.append((audit_record_pb2.AuditRecord.FromString(msg.data), dict(msg.headers or {})))
        return found
    finally:
        await client.close()


async def logged(caplog: pytest.LogCaptureFixture, reason: str) -> bool:
    """Whether a log record names ``reason``; the server may log just after the client has its answer."""
    for _ in range(100):
        if any(reason in str(record.__dict__) for record in caplog.records):
            return True
        await asyncio.sleep(0.01)
    return False


def groups_taking(total: int) -> list[str]:
    """Distinct groups within the character bounds, of CJK text, quotes, backslashes and emoji, whose list
    takes exactly ``total`` bytes escaped."""
    full = [f"{i:02d}" + "財" * 60 + '"\\' * 10 + "😀" * 5 for i in range(MAX_GROUPS - 1)]
    groups: list[str] = []
    for group in full:
        if escaped([*groups, group]) + 1 + 2 + 2 + 10 > total:  # room for one more group of 10+ bytes
            break
        groups.append(group)
    left = total - escaped(groups) - (1 if groups else 0) - 2 - 2  # its comma, quotes and 2-digit prefix
    last = f"{len(groups):02d}" + "財" * ((left - 1) // 6) + "x" * ((left - 1) % 6 + 1)  # ends with "x"
    groups.append(last)
    assert escaped(groups) == total and all(len(g) <= MAX_GROUP_LENGTH for g in groups)
    return groups
