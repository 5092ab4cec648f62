"""Reading interactions: filters, keyset paging, records rebuilt from their stored canonical metadata.

Every read runs in the caller's tenant scope (row-level security), so no filter value, crafted or not, can
reach another tenant's rows: the SQL below never names a tenant at all. Records are returned in
(create_time, sequence) order, which the ``records_tenant_time`` index serves.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from sqlalchemy import text

from parapet.audit.v1 import audit_record_pb2, audit_service_pb2
from parapet.kit import paging, wellknown
from parapet.kit.database import Database
from services.audit.scope import tenant_scope

MAX_PAGE_SIZE = 10_000  # records over a whole stream; the kit's default of 100 applies to 0
BATCH = 100  # records per streamed message
EXPORT_CHUNK_BYTES = 1 << 20


def _conditions(filter_: audit_service_pb2.InteractionFilter) -> tuple[list[str], dict[str, Any]]:
    where = ["kind = 'interaction'"]
    params: dict[str, Any] = {}
    if filter_.HasField("start_time"):
        where.append("create_time >= :start_time")
        params["start_time"] = wellknown.moment(filter_.start_time, "filter.start_time")
    if filter_.HasField("end_time"):
        where.append("create_time < :end_time")
        params["end_time"] = wellknown.moment(filter_.end_time, "filter.end_time")
    for name in ("user_id", "api_key_id", "model", "feature", "request_id"):
        value = getattr(filter_, name)
        if value:
            where.append(f"{name} = :{name}")
            params[name] = value
    if filter_.only_errors:
        where.append("status_code <> 0")
    return where, params


def encode_page_token(
    create_time: datetime, sequence: int, filter_: audit_service_pb2.InteractionFilter
) -> str:
    """The token of the page after the record at (create_time, sequence), bound to the filter. Not to the
    caller: every reader of a tenant sees the same records, and no token reaches another tenant's (RLS)."""
    return paging.encode([create_time.astimezone(UTC).isoformat(), sequence], paging.query_key(filter_))


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
    chunk: int = 500,
) -> AsyncIterator[Any]:
    """Matching rows in order, fetched in keyset chunks (one short transaction each)."""
    where, params = _conditions(filter_)
    remaining = limit
    while remaining > 0:
        clauses = [*where, "(create_time, sequence) > (:after_time, :after_sequence)"] if after else where
        sql = text(
            "SELECT sequence, create_time, previous_hash, record_hash, metadata, prompt, response, erase_time"
            f" FROM records WHERE {' AND '.join(clauses)} ORDER BY create_time, sequence LIMIT :limit"
        )
        values = dict(params, limit=min(chunk, remaining))
        if after:
            values.update(after_time=after[0], after_sequence=after[1])
        async with tenant_scope(database, tenant_id) as session:
            rows = (await session.execute(sql, values)).all()
        for row in rows:
            yield row
        if len(rows) < values["limit"]:
            return
        remaining -= len(rows)
        after = (rows[-1].create_time, int(rows[-1].sequence))


async def query_interactions(
    database: Database, tenant_id: str, request: audit_service_pb2.QueryInteractionsRequest
) -> AsyncIterator[audit_service_pb2.QueryInteractionsResponse]:
    page_size = paging.page_size(request.page_size, maximum=MAX_PAGE_SIZE)
    after = paging.decode_moment_and_number(request.page_token, paging.query_key(request.filter))
    batch: list[audit_record_pb2.AuditRecord] = []
    sent = 0
    last: Any = None
    more = False
    async for row in _matching(database, tenant_id, request.filter, after, page_size + 1):
        if sent + len(batch) == page_size:
            more = True  # the extra row only tells that another page exists
            break
        batch.append(_record(row))
        last = row
        if len(batch) == BATCH:
            sent += len(batch)
            yield audit_service_pb2.QueryInteractionsResponse(records=batch)
            batch = []
    token = encode_page_token(last.create_time, int(last.sequence), request.filter) if more else ""
    if batch or token or sent == 0:
        yield audit_service_pb2.QueryInteractionsResponse(records=batch, next_page_token=token)


async def export_interactions(
    database: Database, tenant_id: str, request: audit_service_pb2.ExportInteractionsRequest
) -> AsyncIterator[audit_service_pb2.ExportInteractionsResponse]:
    """JSON Lines (proto3 JSON of each AuditRecord), in chunks of at most 1 MiB ending at line ends."""
    buffer = bytearray()
    async for row in _matching(database, tenant_id, request.filter, None, limit=2**62):
        line = json.dumps(json_format.MessageToDict(_record(row)), separators=(",", ":")).encode() + b"\n"
        if buffer and len(buffer) + len(line) > EXPORT_CHUNK_BYTES:
            yield audit_service_pb2.ExportInteractionsResponse(data=bytes(buffer))
            buffer.clear()
        buffer += line  # a single line above 1 MiB still goes out whole, in a chunk of its own
    if buffer:
        yield audit_service_pb2.ExportInteractionsResponse(data=bytes(buffer))
