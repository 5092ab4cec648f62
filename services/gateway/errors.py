"""Errors of other services, passed on to the gateway's caller with their code, reason and typed details.

A downstream refusal (a budget's QuotaFailure, auth's UNAUTHENTICATED reason, inference's RetryInfo) is the
caller's answer, so it is relayed as is rather than flattened into INTERNAL; a dependency that is down is
told apart (:func:`is_down`) because the tenant's degradation policy decides what happens then.
"""

from __future__ import annotations

import grpc
import grpc.aio
from google.protobuf.message import Message

from parapet.kit.errors import ErrorDetails, ParapetError, error_details

# Codes that mean "the dependency could not answer", not "it answered no".
_DOWN = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def is_down(error: grpc.aio.AioRpcError) -> bool:
    return error.code() in _DOWN


def relayed(error: grpc.aio.AioRpcError) -> ParapetError:
    """``error`` as a ParapetError the kit sends on unchanged (code, message, ErrorInfo, details)."""
    details: ErrorDetails = error_details(error)
    info = details.error_info
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
