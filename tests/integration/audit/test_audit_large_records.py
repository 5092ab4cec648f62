"""Records with large bodies are read back within gRPC's default 4 MiB per message, and `parapet audit tail`
reads only the records it prints.

QueryInteractions once sent 100 records per message however large: twelve interactions with a 400 KB prompt
(the gateway allows 400,000 characters per chat) made one message over 4 MiB, RESOURCE_EXHAUSTED "Received
message larger than max", and `audit tail` (which asked for 10,000 records to print 20) failed the same way."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import grpc
import grpc.aio
import pytest

from parapet.audit.v1 import audit_service_pb2
from parapet.cli import audit as audit_cli
from parapet.cli import connect
from parapet.kit.errors import error_details
from services.audit.canonical import MAX_RECORD_BYTES
from services.audit.query import MESSAGE_BYTES
from tests.integration.audit.conftest import Audit, interaction, new_tenant

BIG_PROMPT = "x" * 400_000


async def _messages(
    audit: Audit, tenant: str, request: audit_service_pb2.QueryInteractionsRequest
) -> list[audit_service_pb2.QueryInteractionsResponse]:
    call = audit.stub.QueryInteractions(request, metadata=audit.metadata(tenant), timeout=30)
    return [message async for message in call]


async def _large_records(audit: Audit, tenant: str, count: int) -> list[str]:
    ids = []
    for i in range(count):
        record = interaction(f"user-{i}", prompt=BIG_PROMPT, response=f"answer {i}")
        await audit.record(tenant, record)
        ids.append(record.record_id)
    return ids


async def test_large_records_come_in_messages_cut_by_size_in_either_order(audit: Audit) -> None:
    tenant = new_tenant()
    await _large_records(audit, tenant, 12)

    messages = await _messages(audit, tenant, audit_service_pb2.QueryInteractionsRequest(page_size=10_000))
    records = [record for message in messages for record in message.records]
    assert [r.chain.sequence for r in records] == list(range(1, 13))
    assert all(r.interaction.body.prompt == BIG_PROMPT for r in records)
    assert all(message.ByteSize() <= MESSAGE_BYTES for message in messages)
    assert len(messages) >= 5  # 4.8 MB in messages of at most 1 MiB
    assert [m.next_page_token for m in messages] == [""] * len(messages)

    first = await _messages(
        audit, tenant, audit_service_pb2.QueryInteractionsRequest(page_size=5, newest_first=True)
    )
    newest = [r.chain.sequence for m in first for r in m.records]
    token = first[-1].next_page_token
    assert newest == [12, 11, 10, 9, 8] and token
    second = await _messages(
        audit,
        tenant,
        audit_service_pb2.QueryInteractionsRequest(page_size=5, newest_first=True, page_token=token),
    )
    assert [r.chain.sequence for m in second for r in m.records] == [7, 6, 5, 4, 3]
    with pytest.raises(grpc.aio.AioRpcError) as other_order:  # a token serves its own order only
        await _messages(
            audit, tenant, audit_service_pb2.QueryInteractionsRequest(page_size=5, page_token=token)
        )
    assert error_details(other_order.value).reason == "PAGE_TOKEN_INVALID"


async def test_a_record_up_to_the_size_limit_is_readable_and_a_larger_one_refused(audit: Audit) -> None:
    tenant = new_tenant()
    largest = interaction(prompt="x" * (MAX_RECORD_BYTES - 4096))
    await audit.record(tenant, largest)
    messages = await _messages(audit, tenant, audit_service_pb2.QueryInteractionsRequest())
    assert [r.record_id for m in messages for r in m.records] == [largest.record_id]

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await audit.record(tenant, interaction(prompt="x" * MAX_RECORD_BYTES))
    details = error_details(refused.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "RECORD_INVALID")
    assert [v.field for v in details.bad_request.field_violations] == ["record"]  # type: ignore[union-attr]


async def test_an_export_line_larger_than_a_message_is_split_over_chunks(audit: Audit) -> None:
    """JSON escapes a control character in six bytes: a 1 MB prompt of them is a 6 MB line, which went out whole,
    in one message over 4 MiB, and failed the export of the whole tenant at that record."""
    tenant = new_tenant()
    escaped = interaction(prompt="\x01" * 1_000_000)
    after = interaction()
    await audit.record(tenant, escaped)
    await audit.record(tenant, after)
    call = audit.stub.ExportInteractions(
        audit_service_pb2.ExportInteractionsRequest(), metadata=audit.metadata(tenant), timeout=30
    )
    chunks = [chunk.data async for chunk in call]
    assert all(len(chunk) <= MESSAGE_BYTES for chunk in chunks)
    assert len(chunks) >= 6
    lines = b"".join(chunks).decode().splitlines()
    assert [json.loads(line)["recordId"] for line in lines] == [escaped.record_id, after.record_id]
    assert json.loads(lines[0])["interaction"]["body"]["prompt"] == "\x01" * 1_000_000
    assert chunks[-1].endswith(b"\n")


class _CountingStub:
    """The audit stub, counting the records QueryInteractions sends."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub
        self.records = 0

    async def _stream(self, request: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async for batch in self._stub.QueryInteractions(request, **kwargs):
            self.records += len(batch.records)
            yield batch

    def QueryInteractions(self, request: Any, **kwargs: Any) -> AsyncIterator[Any]:
        return self._stream(request, **kwargs)


class _Session:
    """What `audit tail` needs of a connect.Session: the audit stub and the caller's token."""

    def __init__(self, stub: _CountingStub, metadata: connect.Metadata) -> None:
        self._stub, self._metadata = stub, metadata

    def client(self, _factory: Any, _service: str) -> Any:
        return SimpleNamespace(stub=self._stub)

    async def token_metadata(self) -> connect.Metadata:
        return self._metadata

    async def __aenter__(self) -> _Session:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None


def _tail_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    audit_cli.register(parser.add_subparsers())
    return parser.parse_args(["audit", "tail", "--json", *argv])


def _printed(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [json.loads(line)["record_id"] for line in capsys.readouterr().out.splitlines()]


async def test_tail_reads_only_the_newest_it_prints_then_follows(
    audit: Audit, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant = new_tenant()
    ids = await _large_records(audit, tenant, 12)
    stub = _CountingStub(audit.stub)
    monkeypatch.setattr(connect.Session, "from_args", lambda _args: _Session(stub, audit.metadata(tenant)))

    args = _tail_args("-n", "5")
    assert await args.execute(args) == 0
    assert _printed(capsys) == ids[-5:]  # the newest five, oldest first
    assert stub.records == 5

    stub.records = 0
    follow = _tail_args("-n", "2", "-f", "--interval", "0.1")
    task = asyncio.create_task(follow.execute(follow))
    try:
        shown: list[str] = []
        while len(shown) < 2:
            await asyncio.sleep(0.05)
            shown += _printed(capsys)
        assert shown == ids[-2:]
        fresh = [interaction("late-1"), interaction("late-2")]
        for record in fresh:
            await audit.record(tenant, record)
        deadline = asyncio.get_running_loop().time() + 10
        while len(shown) < 4 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            shown += _printed(capsys)
        await asyncio.sleep(0.5)  # a few more polls: nothing printed twice
        shown += _printed(capsys)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert shown == [*ids[-2:], *(r.record_id for r in fresh)]
