"""Exceptions to ``google.rpc.Status``: typed errors keep their details, a dependency that is down becomes
UNAVAILABLE, anything else INTERNAL.

A lost or refused database or NATS connection (``parapet.kit.dependency``) is UNAVAILABLE
``DEPENDENCY_UNAVAILABLE`` with ``RetryInfo``, logged as a warning at most once per interval; a transaction lost
to a concurrent one is ABORTED ``CONCURRENT_CONFLICT``. Any other unexpected exception is logged with its
traceback and the caller gets only ``INTERNAL`` with reason ``INTERNAL_ERROR`` and the request id. None passes
the exception's text on: it can hold SQL, file paths or secrets and must never reach a caller. Works mid-stream
too: the messages already sent stay sent and the stream ends with the status.

A ``CancelledError`` is the call's end when grpc cancelled the call's task (the client went away, the deadline
passed, the server stopped): it propagates and the caller gets CANCELLED or DEADLINE_EXCEEDED from grpc. Raised
in a task nobody cancelled, it is a cancellation that escaped from other work (a shared computation another
caller cancelled, a helper task stopped): propagated, grpc.aio would end the call without any status and the
client would wait for its deadline. It becomes INTERNAL ``INTERNAL_ERROR`` instead, logged with its traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import NoReturn

import grpc
import grpc.aio

from parapet.kit.context import RpcInfo, deadline_passed
from parapet.kit.dependency import database_conflict, dependency_down
from parapet.kit.errors import Aborted, Internal, ParapetError, Unavailable, to_status
from parapet.kit.timeouts import stray_cancellation

log = logging.getLogger("parapet.kit.errors")

# What a client is told to wait before retrying a call that met a dependency down.
DEPENDENCY_RETRY_SECONDS = 1.0
# During an outage every call fails alike: its traceback is logged once per this interval and dependency, the
# calls in between are counted into the next line (each is in the RPC metrics with its reason anyway).
DEPENDENCY_LOG_INTERVAL_SECONDS = 30.0
_dependency_logged: dict[str, tuple[float, int]] = {}  # dependency -> (last logged, calls since)


def _log_dependency_down(down: str, exc: Exception, method: str) -> None:
    now = time.monotonic()
    last, since = _dependency_logged.get(down, (float("-inf"), 0))
    if now - last < DEPENDENCY_LOG_INTERVAL_SECONDS:
        _dependency_logged[down] = (last, since + 1)
        return
    _dependency_logged[down] = (now, 0)
    log.warning(
        "%s is unavailable in %s: %s (%d more calls failed alike since the last such line)",
        down,
        method,
        type(exc).__name__,
        since,
        exc_info=exc,
        extra={"method": method},
    )


def _record(info: RpcInfo, code: grpc.StatusCode | None, reason: str | None = None) -> None:
    info.code = (code or grpc.StatusCode.OK).name
    info.reason = reason


def record_outcome(info: RpcInfo, context: grpc.aio.ServicerContext) -> None:
    """The status of a call whose handler returned (OK, or a code it set on the context)."""
    _record(info, context.code())


def is_unexpected(exc: BaseException) -> bool:
    """An exception the kit maps to INTERNAL (a bug or an unplanned failure), not a deliberate status."""
    if stray_cancellation(exc):
        return True
    return isinstance(exc, Exception) and not isinstance(exc, ParapetError | grpc.aio.AbortError)


async def fail(exc: BaseException, context: grpc.aio.ServicerContext, info: RpcInfo) -> NoReturn:
    """Turn ``exc`` into the call's final status (recorded in ``info``); always raises."""
    if isinstance(exc, grpc.aio.AbortError):
        _record(info, context.code())  # the handler aborted by itself: its status stands
        raise exc
    if stray_cancellation(exc):
        log.error(
            "a cancellation escaped into %s, whose call nobody cancelled; answering INTERNAL",
            info.method,
            exc_info=exc,
            extra={"method": info.method},
        )
        await _internal(context, info)
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        # The client went away or the deadline passed (a stream's generator is closed: GeneratorExit). The
        # status is recorded here because the context must not be asked afterwards (see RpcInfo.peer); the
        # deadline is told from the context variable (before 2026-12-06 both were logged CANCELLED).
        _record(info, grpc.StatusCode.DEADLINE_EXCEEDED if deadline_passed() else grpc.StatusCode.CANCELLED)
        raise exc
    if isinstance(exc, ParapetError):
        _record(info, exc.code, exc.reason)
        await _abort(context, exc)
    if not isinstance(exc, Exception):
        raise exc  # KeyboardInterrupt, SystemExit: not ours to translate
    if database_conflict(exc):
        log.info("a database conflict aborted %s: %s", info.method, type(exc).__name__)
        aborted = Aborted(
            "a concurrent change conflicted with this call; retry it", reason="CONCURRENT_CONFLICT"
        )
        _record(info, aborted.code, aborted.reason)
        await _abort(context, aborted)
    down = dependency_down(exc)
    if down is not None:
        _log_dependency_down(down, exc, info.method)
        unavailable = Unavailable(
            f"{down} is unavailable; retry shortly", retry_after=DEPENDENCY_RETRY_SECONDS
        )
        _record(info, unavailable.code, unavailable.reason)
        await _abort(context, unavailable)
    log.error("unhandled exception in %s", info.method, exc_info=exc, extra={"method": info.method})
    await _internal(context, info)


async def _internal(context: grpc.aio.ServicerContext, info: RpcInfo) -> NoReturn:
    request_id = info.request_id
    internal = Internal(f"internal error (request id {request_id})" if request_id else "internal error")
    _record(info, internal.code, internal.reason)
    await _abort(context, internal)


async def _abort(context: grpc.aio.ServicerContext, error: ParapetError) -> NoReturn:
    """End the call with ``error``'s status, keeping the trailing metadata the handler had set: grpc's
    ``abort_with_status`` replaces it with the status's, and a stream that failed after its summary (the
    gateway's ``parapet-overhead-ms``) lost it until 2026-12-06."""
    status = to_status(error)
    kept = tuple(context.trailing_metadata() or ())
    await context.abort(status.code, status.details, (*kept, *status.trailing_metadata))
    raise AssertionError("abort returned")  # pragma: no cover
