"""Reading interactions: filters, keyset paging, records rebuilt from their stored canonical metadata.

Every read runs in the caller's tenant scope (row-level security), so no filter value, crafted or not, can
reach another tenant's rows: the SQL below never names a tenant at all. Records are returned in
(create_time, sequence) order, oldest or newest first, which the ``records_tenant_time`` index serves.

Both RPCs stream messages of at most ``MESSAGE_BYTES`` (cut by encoded size, never by a count: one record may
hold a prompt of hundreds of kilobytes), far below the 4 MiB that gRPC receivers take by default.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf import json_format
from sqlalchemy import text

from parapet.audit.v1 import audit_record_pb2, audit_service_pb2
from parapet.kit import paging, wellknown
from parapet.kit.database import Database
from parapet.kit.errors import InvalidArgument
from services.audit import chunks
from services.audit.scope import tenant_scope

MAX_PAGE_SIZE = 10_000  # records over a whole stream; the kit's default of 100 applies to 0
MESSAGE_BYTES = 1 << 20  # a streamed message's records (QueryInteractions) or JSON Lines (ExportInteractions)
FETCH_BYTES = 4 << 20  # the stored records one statement reads, about (a larger record alone)
_ROW_BYTES = (
    "octet_length(metadata) + coalesce(octet_length(prompt), 0) + coalesce(octet_length(response), 0)"
)
# A record's framing in QueryInteractionsResponse.records (tag and length), plus room for next_page_token.
_FRAMING_BYTES = 16
_NEWEST_FIRST = "newest_first"  # binds a page token to its order as well as to its filter

T = TypeVar("T")


async def _sized(items: AsyncIterable[tuple[T, int]], limit: int) -> AsyncIterator[list[T]]:
    """``items`` (each with its encoded size) in consecutive groups whose sizes add up to at most ``limit``;
    an item larger than ``limit`` makes a group of its own."""
    group: list[T] = []
    size = 0
    async for item, item_size in items:
        if group and size + item_size > limit:
            yield group
            group, size = [], 0
        group.append(item)
        size += item_size
    if group:
        yield group


def _conditions(filter_: audit_service_pb2.InteractionFilter) -> tuple[list[str], dict[str, Any]]:
    where = ["kind = 'interaction'"]
    params: dict[str, Any] = {}
    if filter_.HasField("start_time"):
        where.append("create_time >= :start_time")
        params["start_time"] = wellknown.moment(filter_.start_time, "filter.start_time")
    if filter_.HasField("end_time"):
        where.append("create_time < :end_time")
        params["end_time"] = wellknown.moment(filter_.end_time, "filter.end_time")
    if "start_time" in params and "end_time" in params and params["end_time"] < params["start_time"]:
        # It would match nothing: an empty answer would tell a caller who swapped the bounds that nothing happened.
        raise InvalidArgument(
            "filter.end_time is before filter.start_time",
            field_violations=[("filter.end_time", "must not be before filter.start_time")],
        )
    for name in ("user_id", "api_key_id", "model", "feature", "request_id"):
        value = getattr(filter_, name)
        if value:
            where.append(f"{name} = :{name}")
            params[name] = value
    if filter_.only_errors:
        where.append("status_code <> 0")
    return where, params


def _query_key(filter_: audit_service_pb2.InteractionFilter, newest_first: bool) -> str:
    # Oldest-first tokens keep the key they had before the order could be chosen, so those issued stay valid.
    return paging.query_key(filter_, _NEWEST_FIRST) if newest_first else paging.query_key(filter_)


def encode_page_token(
    create_time: datetime,
    sequence: int,
    filter_: audit_service_pb2.InteractionFilter,
    newest_first: bool = False,
) -> str:
    """The token of the page after the record at (create_time, sequence), bound to the filter and the order.
    Not to the caller: every reader of a tenant sees the same records, and no token reaches another tenant's
    (RLS)."""
    position: list[str | int] = [create_time.astimezone(UTC).isoformat(), sequence]
    return paging.encode(position, _query_key(filter_, newest_first))


def _record(row: Any) -> audit_record_pb2.AuditRecord:
    record = audit_record_pb2.AuditRecord.FromString(bytes(row.metadata))
    record.chain.sequence = int(row.sequence)
    record.chain.previous_hash = bytes(row.previous_hash)
    record.chain.record_hash = bytes(row.record_hash)
    body = record.interaction.body
    if row.prompt is not None:
        body.prompt = row.prompt
    if row.response is not None:
        body.response = row.response
    if row.erase_time is not None:
        body.erase_time.FromDatetime(row.erase_time.astimezone(UTC))
    return record


async def _matching(
    database: Database,
    tenant_id: str,
    filter_: audit_service_pb2.InteractionFilter,
    after: tuple[datetime, int] | None,
    limit: int,
    *,
    newest_first: bool = False,
    chunk: int = 500,
) -> AsyncIterator[Any]:
    """Matching rows in order, fetched in keyset chunks (one short transaction each) of at most ``chunk`` rows
    and about FETCH_BYTES (``chunks``): 500 rows of long prompts would be hundreds of megabytes."""
    where, params = _conditions(filter_)
    beyond, order = ("<", " DESC") if newest_first else (">", "")
    ordering = f"create_time{order}, sequence{order}"
    remaining = limit
    while remaining > 0:
        clauses = (
            [*where, f"(create_time, sequence) {beyond} (:after_time, :after_sequence)"] if after else where
        )
        sql = text(
            chunks.bounded_sql(
                "SELECT sequence, create_time, previous_hash, record_hash, metadata, prompt, response, erase_time,"
                f" {_ROW_BYTES} AS chunk_bytes FROM records WHERE {' AND '.join(clauses)}"
                f" ORDER BY {ordering} LIMIT :limit",
                ordering,
            )
        )
        values = dict(params, limit=min(chunk, remaining), budget=FETCH_BYTES)
        if after:
            values.update(after_time=after[0], after_sequence=after[1])
        async with tenant_scope(database, tenant_id) as session:
            found = chunks.chunk((await session.execute(sql, values)).all(), values["limit"])
        for row in found.rows:
            yield row
        if found.exhausted:
            return
        remaining -= len(found.rows)
        after = (found.rows[-1].create_time, int(found.rows[-1].sequence))


@dataclass
class _Page:
    """Where a page of QueryInteractions ended: its last row, and whether more rows match."""

    last: Any = None
    more: bool = False


async def _page_records(
    database: Database,
    tenant_id: str,
    request: audit_service_pb2.QueryInteractionsRequest,
    page: _Page,
) -> AsyncIterator[tuple[audit_record_pb2.AuditRecord, int]]:
    """The page's records with their encoded sizes; ``page`` tells, once they are all out, how it ended."""
    page_size = paging.page_size(request.page_size, maximum=MAX_PAGE_SIZE)
    key = _query_key(request.filter, request.newest_first)
    after = paging.decode_moment_and_number(request.page_token, key)
    rows = _matching(
        database, tenant_id, request.filter, after, page_size + 1, newest_first=request.newest_first
    )
    count = 0
    async for row in rows:
        if count == page_size:
            page.more = True  # the extra row only tells that another page exists
            return
        record = _record(row)
        page.last, count = row, count + 1
        yield record, record.ByteSize() + _FRAMING_BYTES


async def query_interactions(
    database: Database, tenant_id: str, request: audit_service_pb2.QueryInteractionsRequest
) -> AsyncIterator[audit_service_pb2.QueryInteractionsResponse]:
    """The page in messages of at most MESSAGE_BYTES (a record larger than that alone in one: records are at
    most MAX_RECORD_BYTES, so it still fits a receiver's 4 MiB); the last message carries next_page_token."""
    page = _Page()
    held: list[audit_record_pb2.AuditRecord] = []
    # One batch is held back: only once the rows are all read is it known whether a next page exists.
    async for batch in _sized(_page_records(database, tenant_id, request, page), MESSAGE_BYTES):
        if held:
            yield audit_service_pb2.QueryInteractionsResponse(records=held)
        held = batch
    token = ""
    if page.more:
        token = encode_page_token(
            page.last.create_time, int(page.last.sequence), request.filter, request.newest_first
        )
    yield audit_service_pb2.QueryInteractionsResponse(records=held, next_page_token=token)


async def _export_pieces(
    database: Database, tenant_id: str, filter_: audit_service_pb2.InteractionFilter
) -> AsyncIterator[tuple[bytes, int]]:
    """Each record's JSON line, cut into pieces of at most MESSAGE_BYTES: escaping can make a line several times
    its record's size, and a message above a receiver's 4 MiB would fail the whole export at that record."""
    async for row in _matching(database, tenant_id, filter_, None, limit=2**62):
        line = json.dumps(json_format.MessageToDict(_record(row)), separators=(",", ":")).encode() + b"\n"
        for start in range(0, len(line), MESSAGE_BYTES):
            piece = line[start : start + MESSAGE_BYTES]
            yield piece, len(piece)


async def export_interactions(
    database: Database, tenant_id: str, request: audit_service_pb2.ExportInteractionsRequest
) -> AsyncIterator[audit_service_pb2.ExportInteractionsResponse]:
    """JSON Lines (proto3 JSON of each AuditRecord), in chunks of at most MESSAGE_BYTES ending at line ends but
    where a longer line goes on in the next chunks."""
    async for pieces in _sized(_export_pieces(database, tenant_id, request.filter), MESSAGE_BYTES):
        yield audit_service_pb2.ExportInteractionsResponse(data=b"".join(pieces))
