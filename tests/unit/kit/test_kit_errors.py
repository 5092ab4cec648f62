"""Error details round-trip from a servicer to a client over a real channel."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import nats.errors
import psycopg
import psycopg.errors
import pytest
from google.rpc import status_pb2
from grpc_status import rpc_status
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as SqlTimeoutError

from parapet.cli.failures import describe
from parapet.kit.dependency import dependency_down
from parapet.kit.errors import (
    DOMAIN,
    InvalidArgument,
    NotFound,
    ParapetError,
    QuotaExceeded,
    Unavailable,
    error_details,
    to_status_proto,
)
from parapet.kit.interceptors import errors as error_interceptor
from parapet.kit.testing import (
    StringValue,
    TestKeys,
    fast_settings,
    generic_app,
    running,
    stream_caller,
    string_service,
    unary_caller,
)
from parapet.kit.timeouts import within
from services.gateway.jobs.records import status_of

SERVICE = "test.v1.Errors"
SECRET = "password=hunter2 at /srv/secret.sql"


async def raise_error(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
    errors: dict[str, Exception] = {
        "bad_request": InvalidArgument(
            "the request is invalid",
            field_violations=[("messages[0].text", "must not be empty"), ("model", "unknown model")],
        ),
        "quota": QuotaExceeded(
            "monthly budget exhausted",
            reason="BUDGET_EXCEEDED",
            violations=[("tenant:tenant-a", "monthly cost budget of 100 USD")],
            retry_after=42.5,
            metadata={"budget": "monthly"},
        ),
        "unavailable": Unavailable("inference is overloaded", retry_after=1.0),
        "not_found": NotFound("no such document", reason="DOCUMENT_NOT_FOUND", metadata={"document": "d1"}),
        "unexpected": RuntimeError(SECRET),
        # What SQLAlchemy raises when PostgreSQL refuses or drops the connection, and nats-py with no server.
        "database_down": OperationalError("SELECT 1", {}, psycopg.OperationalError(SECRET)),
        "bus_down": nats.errors.NoServersError(),
        "deadlock": OperationalError("UPDATE", {}, psycopg.errors.DeadlockDetected(SECRET)),
    }
    raise errors[request.value]


async def stream_then_fail(
    request: StringValue, context: grpc.aio.ServicerContext
) -> AsyncIterator[StringValue]:
    for index in range(3):
        yield StringValue(value=f"chunk-{index}")
        await asyncio.sleep(0)
    # What the handler says of the call in trailers (the gateway's parapet-overhead-ms) outlives its failure.
    context.set_trailing_metadata((("x-handler-trailer", "kept"),))
    if request.value == "unexpected":
        raise KeyError(SECRET)
    raise QuotaExceeded("token budget ran out mid-answer", reason="BUDGET_EXCEEDED", retry_after=3)


async def _cancelled_elsewhere() -> None:
    """Await work another caller cancelled (a shared computation): CancelledError in a task nobody cancelled."""
    shared: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    shared.cancel()
    await shared


async def cancelled_inside(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
    await _cancelled_elsewhere()
    return StringValue(value="unreachable")


async def stream_then_cancelled_inside(
    request: StringValue, context: grpc.aio.ServicerContext
) -> AsyncIterator[StringValue]:
    yield StringValue(value="chunk-0")
    await _cancelled_elsewhere()


def huge_error(size: int, letter: str = "é") -> InvalidArgument:
    """A refusal of about ``size`` characters of message and as much again in violations, by default in accented
    letters (six bytes each once percent-encoded in grpc-message): a servicer naming every bad item of a big
    request."""
    return InvalidArgument(
        "the request is invalid: " + letter * size,
        field_violations=[(f"items[{index}].text", letter * 100) for index in range(size // 100)],
        metadata={"first": letter * size},
    )


async def raise_huge(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
    raise huge_error(int(request.value))


async def abort_huge_outside_the_kit(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
    """A server without the kit aborting with a status too large for the client's metadata limit."""
    await context.abort_with_status(rpc_status.to_status(to_status_proto_unbounded(huge_error(6000, "x"))))
    raise AssertionError("unreachable")


def to_status_proto_unbounded(err: ParapetError) -> status_pb2.Status:
    status = status_pb2.Status(code=err.code.value[0], message=err.message)
    for detail in err.details:
        status.details.add().Pack(detail)
    return status


# The Slow handler's progress, as events the test makes in its own loop before each call.
SLOW: dict[str, asyncio.Event] = {}


async def slow(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
    SLOW["started"].set()
    try:
        await asyncio.sleep(30)
    finally:
        SLOW["ended"].set()
    return StringValue(value="late")


@pytest.fixture
async def channel(keys: TestKeys) -> AsyncIterator[grpc.aio.Channel]:
    handler = string_service(
        SERVICE,
        unary={
            "Raise": raise_error,
            "RaiseHuge": raise_huge,
            "CancelledInside": cancelled_inside,
            "Slow": slow,
        },
        server_streaming={"Stream": stream_then_fail, "StreamCancelledInside": stream_then_cancelled_inside},
    )
    app = generic_app(handler, keys=keys, service_names=(SERVICE,))
    async with (
        running(app, fast_settings()) as (_, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch,
    ):
        yield ch


async def call_unary(channel: grpc.aio.Channel, keys: TestKeys, kind: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await unary_caller(channel, f"/{SERVICE}/Raise")(StringValue(value=kind), metadata=keys.metadata())
    return caught.value


async def test_bad_request_field_violations(channel: grpc.aio.Channel, keys: TestKeys) -> None:
    details = error_details(await call_unary(channel, keys, "bad_request"))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.message == "the request is invalid"
    assert details.error_info is not None
    assert (details.reason, details.error_info.domain) == ("REQUEST_INVALID", DOMAIN)
    assert details.bad_request is not None
    assert [(v.field, v.description) for v in details.bad_request.field_violations] == [
        ("messages[0].text", "must not be empty"),
        ("model", "unknown model"),
    ]


async def test_quota_failure_and_retry_info(channel: grpc.aio.Channel, keys: TestKeys) -> None:
    details = error_details(await call_unary(channel, keys, "quota"))
    assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.reason == "BUDGET_EXCEEDED"
    assert details.error_info is not None and dict(details.error_info.metadata) == {"budget": "monthly"}
    assert details.quota_failure is not None
    assert details.quota_failure.violations[0].subject == "tenant:tenant-a"
    assert details.retry_after == pytest.approx(42.5)


async def test_unavailable_with_retry_info(channel: grpc.aio.Channel, keys: TestKeys) -> None:
    details = error_details(await call_unary(channel, keys, "unavailable"))
    assert (details.code, details.reason, details.retry_after) == (
        grpc.StatusCode.UNAVAILABLE,
        "DEPENDENCY_UNAVAILABLE",
        1.0,
    )


@pytest.mark.parametrize(
    ("kind", "named"), [("database_down", "the database"), ("bus_down", "the message bus")]
)
async def test_a_dependency_down_is_unavailable_with_retry_info_not_internal(
    channel: grpc.aio.Channel,
    keys: TestKeys,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    named: str,
) -> None:
    """The contract's promise for a database or NATS outage, for failures no servicer mapped itself."""
    monkeypatch.setattr(error_interceptor, "_dependency_logged", {})
    with caplog.at_level(logging.WARNING, logger="parapet.kit.errors"):
        errors = [await call_unary(channel, keys, kind) for _ in range(3)]
    for error in errors:
        details = error_details(error)
        assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
        assert details.retry_after == 1.0
        assert (
            details.message == f"{named} is unavailable; retry shortly"
        )  # the exception's text stays inside
    # An outage fails every call alike: one line with the traceback per interval, not one per call.
    logged = [r for r in caplog.records if r.name == "parapet.kit.errors"]
    assert [(r.levelname, r.exc_info is not None) for r in logged] == [("WARNING", True)]


async def test_a_transaction_lost_to_a_concurrent_one_is_aborted_for_a_retry(
    channel: grpc.aio.Channel, keys: TestKeys
) -> None:
    details = error_details(await call_unary(channel, keys, "deadlock"))
    assert (details.code, details.reason) == (grpc.StatusCode.ABORTED, "CONCURRENT_CONFLICT")
    assert "hunter2" not in details.message


@pytest.mark.parametrize(
    ("exc", "named"),
    [
        (OperationalError("SELECT 1", {}, psycopg.OperationalError("connection failed")), "the database"),
        (OperationalError("SELECT 1", {}, psycopg.errors.AdminShutdown("terminating")), "the database"),
        (OperationalError("SELECT 1", {}, psycopg.errors.ConnectionFailure("lost")), "the database"),
        (psycopg.InterfaceError("the connection is closed"), "the database"),
        (SqlTimeoutError("QueuePool limit reached"), "the database"),
        (nats.errors.TimeoutError(), "the message bus"),
        # Operational to the driver, but no outage: a retry in a second would not cure them.
        (OperationalError("SELECT 1", {}, psycopg.errors.QueryCanceled("statement timeout")), None),
        (OperationalError("SELECT 1", {}, psycopg.errors.DiskFull("no space")), None),
        (OperationalError("SELECT 1", {}, psycopg.errors.SerializationFailure("conflict")), None),  # ABORTED
        (ProgrammingError("SELECT nope", {}, psycopg.errors.UndefinedTable("nope")), None),
        (TimeoutError(), None),  # an OSError, and the kit's own time limits raise it
        (TimeoutError(), None),
    ],
)
def test_only_a_lost_or_refused_connection_counts_as_a_dependency_down(
    exc: BaseException, named: str | None
) -> None:
    assert dependency_down(exc) == named


async def test_error_info_metadata(channel: grpc.aio.Channel, keys: TestKeys) -> None:
    details = error_details(await call_unary(channel, keys, "not_found"))
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.reason == "DOCUMENT_NOT_FOUND"
    assert details.error_info is not None and details.error_info.metadata["document"] == "d1"
    assert details.bad_request is None and details.quota_failure is None


async def test_unexpected_exception_is_internal_without_leaking(
    channel: grpc.aio.Channel, keys: TestKeys, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="parapet.kit.errors"):
        error = await call_unary(channel, keys, "unexpected")
    details = error_details(error)
    assert details.code == grpc.StatusCode.INTERNAL
    assert details.reason == "INTERNAL_ERROR"
    assert "hunter2" not in (error.details() or "") and "hunter2" not in details.message
    assert "RuntimeError" not in details.message
    # ...but the operator gets the traceback.
    assert any(record.exc_info and "hunter2" in str(record.exc_info[1]) for record in caplog.records)


@pytest.mark.parametrize("kind", ["quota", "unexpected"])
async def test_error_mid_stream_arrives_with_details(
    channel: grpc.aio.Channel, keys: TestKeys, kind: str
) -> None:
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in stream_caller(channel, f"/{SERVICE}/Stream")(
            StringValue(value=kind), metadata=keys.metadata()
        ):
            received.append(message.value)
    assert received == ["chunk-0", "chunk-1", "chunk-2"]
    # grpc's abort_with_status replaced the handler's trailers with the status's until 2026-12-06.
    assert ("x-handler-trailer", "kept") in tuple(caught.value.trailing_metadata() or ())
    details = error_details(caught.value)
    if kind == "quota":
        assert (details.code, details.reason, details.retry_after) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "BUDGET_EXCEEDED",
            3.0,
        )
        assert details.message == "token budget ran out mid-answer"
    else:
        assert (details.code, details.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL_ERROR")
        assert "hunter2" not in details.message


async def test_a_cancellation_escaping_into_an_uncancelled_call_is_internal_not_silence(
    channel: grpc.aio.Channel, keys: TestKeys, caplog: pytest.LogCaptureFixture
) -> None:
    """grpc.aio ends a call whose handler raised CancelledError without any status: the client waited for its
    deadline (a shared embedding another caller cancelled hung every request for the same text)."""
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="parapet.kit.errors"):
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await unary_caller(channel, f"/{SERVICE}/CancelledInside")(
                StringValue(value="x"), metadata=keys.metadata(), timeout=20
            )
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for message in stream_caller(channel, f"/{SERVICE}/StreamCancelledInside")(
                StringValue(value="x"), metadata=keys.metadata(), timeout=20
            ):
                received.append(message.value)
    assert time.monotonic() - started < 10, "the client waited for its deadline"
    for caught in (unary, streamed):
        details = error_details(caught.value)
        assert (details.code, details.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL_ERROR")
    assert received == ["chunk-0"]
    escaped = [r for r in caplog.records if "cancellation escaped" in r.getMessage()]
    assert len(escaped) == 2 and all(r.exc_info for r in escaped)


async def test_a_call_the_client_cancels_or_lets_expire_is_still_cancelled_not_internal(
    channel: grpc.aio.Channel, keys: TestKeys, caplog: pytest.LogCaptureFixture
) -> None:
    slow_call = unary_caller(channel, f"/{SERVICE}/Slow")
    with caplog.at_level(logging.ERROR, logger="parapet.kit.errors"):
        SLOW.update(started=asyncio.Event(), ended=asyncio.Event())
        call = slow_call(StringValue(value="x"), metadata=keys.metadata())
        await within(5, SLOW["started"].wait())
        call.cancel()
        await within(5, SLOW["ended"].wait())  # the handler was cancelled (and no status was made up)
        SLOW.update(started=asyncio.Event(), ended=asyncio.Event())
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            await slow_call(StringValue(value="x"), metadata=keys.metadata(), timeout=0.3)
        await within(5, SLOW["ended"].wait())
    assert call.cancelled()
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert [r for r in caplog.records if r.name == "parapet.kit.errors"] == []


@pytest.mark.parametrize("size", [1500, 2500, 6000, 40_000])
async def test_an_oversized_refusal_reaches_the_client_with_its_details(
    channel: grpc.aio.Channel, keys: TestKeys, size: int
) -> None:
    """Clients drop trailers over 8 KiB (grpc's default; between 8 and 16 KiB at random, always above): a refusal
    naming many bad items reached the caller as RESOURCE_EXHAUSTED "Stream removed", with no ErrorInfo, and
    ``error_details`` of it raised ValueError (the details that did arrive had another code)."""
    call = unary_caller(channel, f"/{SERVICE}/RaiseHuge")
    for _ in range(5):  # the limit between 8 and 16 KiB is applied at random: every attempt must pass
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(StringValue(value=str(size)), metadata=keys.metadata())
        details = error_details(caught.value)
        assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_INVALID")
        assert details.message.startswith("the request is invalid: éé")
        assert details.bad_request is not None and details.bad_request.field_violations
        first = details.bad_request.field_violations[0]
        assert first.field == "items[0].text" and first.description.startswith("éé")
        shown = len(details.bad_request.field_violations)
        if shown < size // 100:
            assert f"{size // 100 - shown} more field violations not shown" in details.message
        assert details.error_info is not None and details.error_info.metadata["first"].startswith("éé")


async def test_error_details_of_a_status_the_client_cut_does_not_raise() -> None:
    handler = string_service(SERVICE, unary={"Abort": abort_huge_outside_the_kit})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await unary_caller(plain, f"/{SERVICE}/Abort")(StringValue(value="x"))
    finally:
        await server.stop(0)
    details = error_details(caught.value)
    assert details.code == caught.value.code() and details.error_info is None
    # Every reader of a call's status: the CLI's one line (a traceback until 2026-12-06) and a job item's
    # stored status (INTERNAL), as well as error_details.
    assert describe(caught.value).startswith("RESOURCE_EXHAUSTED")
    assert status_of(caught.value).code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


@pytest.mark.parametrize(
    "error",
    [
        QuotaExceeded("over", violations=[(f"user:{i}", "b" * 500) for i in range(1000)], retry_after=2),
        Unavailable("down " + "%" * 50_000, retry_after=1),
        NotFound("gone", metadata={"document": "d" * 50_000}),
    ],
    ids=["quota", "message", "metadata"],
)
def test_every_status_is_bounded_and_keeps_its_code_reason_and_retry(error: ParapetError) -> None:
    status = to_status_proto(error)
    assert (
        len(status.SerializeToString()) <= 6 * 1024 * 3 // 4 and len(status.message) <= 1536
    )  # base64: 6 KiB
    assert status.code == error.code.value[0]
    details = [detail.type_url.rsplit(".", 1)[-1] for detail in status.details]
    assert details == ["ErrorInfo", *(type(detail).DESCRIPTOR.name for detail in error.details)]
    if isinstance(error, QuotaExceeded):
        assert "more quota violations not shown" in status.message


def test_status_proto_puts_error_info_first() -> None:
    status = to_status_proto(QuotaExceeded("x", violations=[("s", "d")], retry_after=0.25))
    assert [detail.type_url.rsplit(".", 1)[-1] for detail in status.details] == [
        "ErrorInfo",
        "QuotaFailure",
        "RetryInfo",
    ]
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


def test_every_error_has_upper_snake_reason() -> None:
    for error_type in ParapetError.__subclasses__():
        reason = error_type.default_reason
        assert reason == reason.upper() and " " not in reason, error_type
