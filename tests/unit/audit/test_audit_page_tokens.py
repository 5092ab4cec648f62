"""QueryInteractions' page tokens: one from another filter, or whose position is not a record's, is refused
before any record is read (the refusals need no database)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

import pytest

from parapet.audit.v1 import audit_service_pb2
from parapet.kit import paging
from parapet.kit.database import Database
from parapet.kit.errors import InvalidArgument
from services.audit.query import encode_page_token, query_interactions

ALICE = audit_service_pb2.InteractionFilter(user_id="alice")
BOB = audit_service_pb2.InteractionFilter(user_id="bob")


async def _refusal(request: audit_service_pb2.QueryInteractionsRequest) -> tuple[str | None, list[str]]:
    with pytest.raises(InvalidArgument) as raised:
        await anext(query_interactions(cast(Database, None), "acme", request))
    (bad_request,) = raised.value.details
    return raised.value.reason, [v.field for v in bad_request.field_violations]  # type: ignore[attr-defined]


async def test_a_token_serves_only_the_filter_it_came_from() -> None:
    token = encode_page_token(datetime(2026, 12, 5, tzinfo=UTC), 7, ALICE)
    for request in (
        audit_service_pb2.QueryInteractionsRequest(filter=BOB, page_token=token),
        audit_service_pb2.QueryInteractionsRequest(page_token=token),
        audit_service_pb2.QueryInteractionsRequest(
            filter=audit_service_pb2.InteractionFilter(user_id="alice", only_errors=True), page_token=token
        ),
    ):
        assert await _refusal(request) == ("PAGE_TOKEN_INVALID", ["page_token"]), request


async def test_a_position_that_is_not_a_record_is_refused() -> None:
    query = paging.query_key(ALICE)
    positions: list[paging.Position] = [
        ["yesterday", 7],
        ["2026-12-05T00:00:00+00:00", "7"],
        ["2026-12-05T00:00:00+00:00"],
    ]
    for position in positions:
        request = audit_service_pb2.QueryInteractionsRequest(
            filter=ALICE, page_token=paging.encode(position, query)
        )
        assert await _refusal(request) == ("PAGE_TOKEN_INVALID", ["page_token"]), position
