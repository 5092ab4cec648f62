"""Page sizes and page tokens: a token names a position and is valid only for the query and caller it was
issued to; anything else is INVALID_ARGUMENT PAGE_TOKEN_INVALID naming page_token."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime

import pytest

from parapet.auth.v1 import tenant_admin_service_pb2
from parapet.gateway.v1 import job_service_pb2
from parapet.kit import paging
from parapet.kit.errors import InvalidArgument


def _refused(call: object) -> tuple[str | None, list[str]]:
    with pytest.raises(InvalidArgument) as raised:
        call()  # type: ignore[operator]
    (bad_request,) = raised.value.details
    return raised.value.reason, [v.field for v in bad_request.field_violations]  # type: ignore[attr-defined]


def test_page_size_defaults_coerces_and_refuses_negative() -> None:
    assert paging.page_size(0) == paging.DEFAULT_PAGE_SIZE
    assert paging.page_size(7) == 7
    assert paging.page_size(10**9) == paging.MAX_PAGE_SIZE
    assert paging.page_size(0, default=50, maximum=60) == 50 and paging.page_size(99, maximum=60) == 60
    assert _refused(lambda: paging.page_size(-1)) == ("REQUEST_INVALID", ["page_size"])


def test_a_position_round_trips_for_its_query_only() -> None:
    query = "q1"
    token = paging.encode(["2026-12-05T00:00:00+00:00", 42], query)
    assert paging.decode(token, query) == ["2026-12-05T00:00:00+00:00", 42]
    assert paging.decode("", query) is None
    assert paging.decode_number(paging.encode([5], query), query) == 5
    assert paging.decode_number("", query) is None
    forged = base64.urlsafe_b64encode(json.dumps({"p": [1], "q": "q1"}).encode()).decode()
    assert (
        paging.decode_number(forged, query) == 1
    )  # tokens are opaque, not secret: the same JSON is the same
    for bad in (
        paging.encode([5], "q2"),  # another query's
        "not base64 at all!",
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(json.dumps({"p": [], "q": query}).encode()).decode(),
        base64.urlsafe_b64encode(json.dumps({"p": [None], "q": query}).encode()).decode(),
        base64.urlsafe_b64encode(json.dumps({"p": [True], "q": query}).encode()).decode(),
        base64.urlsafe_b64encode(json.dumps({"p": "5", "q": query}).encode()).decode(),
    ):
        assert _refused(lambda bad=bad: paging.decode(bad, query)) == ("PAGE_TOKEN_INVALID", ["page_token"])
    for not_a_number in (
        paging.encode(["5"], query),
        paging.encode([-1], query),
        paging.encode([1, 2], query),
    ):
        assert _refused(lambda t=not_a_number: paging.decode_number(t, query))[0] == "PAGE_TOKEN_INVALID"


def test_the_query_key_ignores_paging_fields_and_binds_the_scope() -> None:
    request = job_service_pb2.ListJobResultsRequest(job_id="j1", page_size=10, page_token="abc")
    same = job_service_pb2.ListJobResultsRequest(job_id="j1", page_size=99)
    assert paging.query_key(request, "acme", "alice") == paging.query_key(same, "acme", "alice")
    other_job = job_service_pb2.ListJobResultsRequest(job_id="j2")
    assert paging.query_key(request, "acme", "alice") != paging.query_key(other_job, "acme", "alice")
    assert paging.query_key(request, "acme", "alice") != paging.query_key(request, "acme", "bob")
    # The scope's parts are separated: ("ab", "c") is not ("a", "bc").
    assert paging.query_key(request, "ab", "c") != paging.query_key(request, "a", "bc")
    # Two RPCs whose requests serialize alike do not share tokens.
    users = tenant_admin_service_pb2.ListUsersRequest(tenant_id="acme")
    keys = tenant_admin_service_pb2.ListApiKeysRequest(tenant_id="acme")
    assert users.SerializeToString() == keys.SerializeToString()
    assert paging.query_key(users, "acme", "root") != paging.query_key(keys, "acme", "root")
    # A request without paging fields is keyed as it is.
    assert paging.query_key(job_service_pb2.GetJobRequest(job_id="j1"))


def test_text_and_moment_and_id_positions() -> None:
    query = "q"
    assert paging.decode_text(paging.encode(["tenant-b"], query), query) == "tenant-b"
    assert paging.decode_text("", query) is None and paging.decode_moment_and_id("", query) is None
    moment, identifier = datetime(2026, 12, 5, 16, 0, 0, 123456, tzinfo=UTC), uuid.uuid4()
    token = paging.encode([moment.isoformat(), str(identifier)], query)
    assert paging.decode_moment_and_id(token, query) == (moment, identifier)
    for bad in (
        paging.encode([5], query),
        paging.encode(["a", "b"], query),
        paging.encode([moment.isoformat(), "not-a-uuid"], query),
        paging.encode(["yesterday", str(identifier)], query),
    ):
        assert _refused(lambda bad=bad: paging.decode_moment_and_id(bad, query))[0] == "PAGE_TOKEN_INVALID"
    assert _refused(lambda: paging.decode_text(token, query))[0] == "PAGE_TOKEN_INVALID"
    sequence_token = paging.encode([moment.isoformat(), 42], query)
    assert paging.decode_moment_and_number(sequence_token, query) == (moment, 42)
    assert paging.decode_moment_and_number("", query) is None
    for bad in (
        token,
        paging.encode([moment.isoformat(), -1], query),
        paging.encode([moment.isoformat(), 2**63], query),
    ):
        assert (
            _refused(lambda bad=bad: paging.decode_moment_and_number(bad, query))[0] == "PAGE_TOKEN_INVALID"
        )


def test_crafted_tokens_are_refused_not_crashed_on() -> None:
    query = "q"
    nested = base64.urlsafe_b64encode(
        json.dumps({"p": [1], "q": query}).replace("[1]", "[" * 50_000 + "]" * 50_000).encode()
    )
    deep = base64.urlsafe_b64encode(("[" * 100_000 + "]" * 100_000).encode()).decode()
    for token in (nested.decode(), deep, "A" * (paging.MAX_TOKEN_LENGTH + 1)):
        assert _refused(lambda token=token: paging.decode(token, query))[0] == "PAGE_TOKEN_INVALID"
    huge = paging.encode([2**63], query)
    assert _refused(lambda: paging.decode_number(huge, query))[0] == "PAGE_TOKEN_INVALID"
    assert paging.decode_number(paging.encode([paging.MAX_NUMBER_POSITION], query), query) == 2**31 - 1


@pytest.mark.parametrize("position", ["d1\x00", "d\ud800", "\udfff"], ids=["nul", "lone-surrogate", "low"])
def test_a_text_position_no_database_can_take_is_refused(position: str) -> None:
    # Tokens are not secret: a caller can write one for its own query, with any position. Such a text became a
    # query parameter that failed the listing INTERNAL.
    query = "q"
    token = paging.encode([position], query)
    assert _refused(lambda: paging.decode_text(token, query))[0] == "PAGE_TOKEN_INVALID"
    mixed = paging.encode([position, 3], query)
    assert _refused(lambda: paging.decode(mixed, query))[0] == "PAGE_TOKEN_INVALID"
    # Any other text, however odd, is a position (control characters, astral and combining characters).
    for fine in ("tab\there", "\U0001f600 é\u0301", ""):
        assert paging.decode_text(paging.encode([fine], query), query) == fine
