"""Errors of other services, passed on to the gateway's caller with their code, reason and typed details.

A downstream refusal (a budget's QuotaFailure, auth's UNAUTHENTICATED reason, inference's RetryInfo) is the
caller's answer, so it is relayed as is rather than flattened into INTERNAL; a dependency that is down is
told apart (:func:`is_down`) because the tenant's degradation policy decides what happens then.
"""

from __future__ import annotations

import logging

import grpc
import grpc.aio
from google.protobuf.message import Message

from parapet.kit.context import deadline_passed
from parapet.kit.errors import (
    DeadlineExceeded,
    ErrorDetails,
    Internal,
    ParapetError,
    Unavailable,
    error_details,
)

log = logging.getLogger(__name__)

# Codes that mean "the dependency could not answer", not "it answered no".
_DOWN = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def is_down(error: grpc.aio.AioRpcError) -> bool:
    """The dependency could not answer. Not when the caller's own deadline ran out during the call: that is
    relayed as DEADLINE_EXCEEDED, where the degradation policy would have called the dependency down (refusing
    UNAVAILABLE "retry shortly", or answering without it) and the audit record would have said so."""
    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and deadline_passed():
        return False
    return error.code() in _DOWN


def relayed(error: grpc.aio.AioRpcError) -> ParapetError:
    """``error`` as a ParapetError the kit sends on unchanged (code, message, ErrorInfo, details).

    A status without ErrorInfo never came from a Parapet servicer: grpc made it up on this side (the service
    unreachable, its channel broken, a message too large). Its text is grpc's, naming the service's internal
    address, and its "reason" would be the code's name, in no catalogue: the caller gets the contract's own
    instead (UNAVAILABLE ``DEPENDENCY_UNAVAILABLE`` with RetryInfo, DEADLINE_EXCEEDED, or INTERNAL), and the log
    the original. Until 2026-12-06 it was relayed as it came, internal address included, to any caller."""
    details: ErrorDetails = error_details(error)
    info = details.error_info
    if info is None:
        return _transport_failure(details)
    extra: list[Message] = [
        d for d in (details.bad_request, details.quota_failure, details.retry_info) if d is not None
    ]
    relay = ParapetError(
        details.message or "a dependency failed",
        reason=info.reason if info is not None and info.reason else details.code.name,
        metadata=dict(info.metadata) if info is not None else None,
        details=extra,
    )
    relay.code = details.code
    return relay


def _transport_failure(details: ErrorDetails) -> ParapetError:
    log.warning(
        "a call to a dependency failed in transport",
        extra={"code": details.code.name, "detail": details.message},
    )
    if details.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded("a service Parapet depends on did not answer in time")
    if details.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return Unavailable(
            "a service Parapet depends on cannot be reached; please retry shortly", retry_after=1.0
        )
    return Internal("a call between Parapet's services failed")
