"""Typed errors that become a ``google.rpc.Status`` with details, and their unpacking on the client side.

Servicers raise a :class:`ParapetError` subclass; the errors interceptor turns it into a status whose
details always hold an ``ErrorInfo`` (reason in UPPER_SNAKE, domain ``parapet.dev``) plus the typed details
that fit the failure (``BadRequest``, ``QuotaFailure``, ``RetryInfo``). Clients in any language read the
same details from the ``grpc-status-details-bin`` trailer; Python clients use :func:`error_details`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "parapet.dev"


class ParapetError(Exception):
    """An error with a gRPC code, a machine-readable reason and optional typed details.

    ``message`` is sent to the caller as is: it must be written for them and never hold secrets or
    internals. ``metadata`` goes into ``ErrorInfo.metadata`` (string to string, for machines).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        details: Sequence[Message] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        self.details = list(details)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"


class InvalidArgument(ParapetError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "REQUEST_INVALID"

    def __init__(
        self,
        message: str,
        *,
        field_violations: Iterable[tuple[str, str]] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """``field_violations`` are (field path, description) pairs, e.g. ``("messages[0].text", "empty")``."""
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=name, description=description)
            for name, description in field_violations
        ]
        details: list[Message] = (
            [error_details_pb2.BadRequest(field_violations=violations)] if violations else []
        )
        super().__init__(message, reason=reason, metadata=metadata, details=details)


class NotFound(ParapetError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "RESOURCE_NOT_FOUND"


class AlreadyExists(ParapetError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class PermissionDenied(ParapetError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_MISSING"


class Unauthenticated(ParapetError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class FailedPrecondition(ParapetError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(ParapetError):
    """A conflict (e.g. a concurrent update): the caller may retry the whole read-modify-write."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class DeadlineExceeded(ParapetError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Unimplemented(ParapetError):
    """For RPCs whose service issue is not done yet: a clear answer, never a fake one."""

    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "NOT_IMPLEMENTED"


class Internal(ParapetError):
    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL_ERROR"


def _retry_info(retry_after: float) -> error_details_pb2.RetryInfo:
    seconds = math.floor(retry_after)
    nanos = round((retry_after - seconds) * 1e9)
    return error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds, nanos=nanos))


class QuotaExceeded(ParapetError):
    """A budget or rate limit: ``QuotaFailure`` names what ran out, ``RetryInfo`` says when to retry."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "QUOTA_EXCEEDED"

    def __init__(
        self,
        message: str,
        *,
        violations: Iterable[tuple[str, str]] = (),
        retry_after: float | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """``violations`` are (subject, description) pairs, e.g. ``("tenant:acme", "monthly cost budget")``."""
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(subject=subject, description=description)
                for subject, description in violations
            ]
        )
        details: list[Message] = [quota]
        if retry_after is not None:
            details.append(_retry_info(retry_after))
        super().__init__(message, reason=reason, metadata=metadata, details=details)


class Unavailable(ParapetError):
    """A dependency is down or overloaded: safe to retry after ``retry_after`` seconds."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "DEPENDENCY_UNAVAILABLE"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        details: list[Message] = [] if retry_after is None else [_retry_info(retry_after)]
        super().__init__(message, reason=reason, metadata=metadata, details=details)


# A status travels in the call's trailers twice: its message percent-encoded in grpc-message and the whole status
# in base64 in grpc-status-details-bin. Clients refuse trailers over 8 KiB (grpc's default limit in every language;
# between 8 and 16 KiB at random, always above), and the caller then gets RESOURCE_EXHAUSTED "Stream removed"
# without any of the details: so a status is kept under this size, leaving room for the other trailers.
MAX_STATUS_WIRE_BYTES = 6 * 1024
MAX_MESSAGE_WIRE_BYTES = 1536  # of the message of a status that would not fit otherwise, percent-encoded
MAX_DETAIL_CHARS = 256  # of each text of its details (a violation's field and description, a metadata value)


def _encoded_size(text: str) -> int:
    """The bytes of ``text`` in grpc-message: printable ASCII but ``%`` as is, every other byte as ``%XX``."""
    return sum(1 if 0x20 <= byte <= 0x7E and byte != 0x25 else 3 for byte in text.encode())


def _wire_size(status: status_pb2.Status) -> int:
    """The bytes ``status`` takes in the trailers: its message in grpc-message, all of it in base64."""
    serialized: int = status.ByteSize()
    return _encoded_size(status.message) + 4 * math.ceil(serialized / 3)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip_encoded(text: str, limit: int) -> str:
    """``text`` cut (with "…", 9 bytes encoded) so that it takes at most ``limit`` bytes in grpc-message."""
    if _encoded_size(text) <= limit:
        return text
    used, kept = _encoded_size("…"), []
    for character in text:
        used += _encoded_size(character)
        if used > limit:
            break
        kept.append(character)
    return "".join(kept) + "…"


def _build(
    err: ParapetError, message: str, metadata: Mapping[str, str], details: Sequence[Message]
) -> status_pb2.Status:
    status = status_pb2.Status(code=err.code.value[0], message=message)
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=metadata)
    )
    for detail in details:
        status.details.add().Pack(detail)
    return status


def _clipped(detail: Message) -> Message:
    """A copy of ``detail`` whose texts are clipped (the kit's own violation lists; other details as they are)."""
    copy = type(detail)()
    copy.CopyFrom(detail)
    if isinstance(copy, error_details_pb2.BadRequest):
        for violation in copy.field_violations:
            violation.field = _clip(violation.field, MAX_DETAIL_CHARS)
            violation.description = _clip(violation.description, MAX_DETAIL_CHARS)
    elif isinstance(copy, error_details_pb2.QuotaFailure):
        for quota in copy.violations:
            quota.subject = _clip(quota.subject, MAX_DETAIL_CHARS)
            quota.description = _clip(quota.description, MAX_DETAIL_CHARS)
    return copy


def _violations(details: Sequence[Message]) -> Any:
    """The list of violations a status can shorten (a BadRequest's, else a QuotaFailure's), or None."""
    for detail in details:
        if isinstance(detail, error_details_pb2.BadRequest):
            return detail.field_violations
    for detail in details:
        if isinstance(detail, error_details_pb2.QuotaFailure):
            return detail.violations
    return None


def _bounded(err: ParapetError) -> status_pb2.Status:
    """``err``'s status within MAX_STATUS_WIRE_BYTES: texts clipped, then the violations after as many as fit
    left out, the message saying how many. The first violations and every reason and code survive."""
    message = _clip_encoded(err.message, MAX_MESSAGE_WIRE_BYTES)
    metadata = {key: _clip(value, MAX_DETAIL_CHARS) for key, value in err.metadata.items()}
    details = [_clipped(detail) for detail in err.details]
    status = _build(err, message, metadata, details)
    violations = _violations(details)
    if _wire_size(status) <= MAX_STATUS_WIRE_BYTES or violations is None:
        return status
    everything = list(violations)

    def keeping(count: int) -> status_pb2.Status:
        del violations[:]
        violations.extend(everything[:count])
        left_out = len(everything) - count
        note = f" ({left_out} more {_kind(everything)} not shown)" if left_out else ""
        return _build(
            err, _clip_encoded(message, MAX_MESSAGE_WIRE_BYTES - len(note)) + note, metadata, details
        )

    low, high = 0, len(everything)  # the most violations that fit, found in a few builds
    while low < high:
        middle = (low + high + 1) // 2
        if _wire_size(keeping(middle)) <= MAX_STATUS_WIRE_BYTES:
            low = middle
        else:
            high = middle - 1
    return keeping(low)


def _kind(violations: Sequence[Message]) -> str:
    if violations and isinstance(violations[0], error_details_pb2.BadRequest.FieldViolation):
        return "field violations"
    return "quota violations"


def to_status_proto(err: ParapetError) -> status_pb2.Status:
    """The ``google.rpc.Status`` for ``err``: ErrorInfo first, then its typed details; kept small enough for any
    client to receive (``MAX_STATUS_WIRE_BYTES``)."""
    status = _build(err, err.message, err.metadata, err.details)
    if _wire_size(status) <= MAX_STATUS_WIRE_BYTES:
        return status
    return _bounded(err)


def to_status(err: ParapetError) -> grpc.Status:
    """The ``grpc.Status`` of ``err`` (details in ``grpc-status-details-bin``, its trailing metadata)."""
    return rpc_status.to_status(to_status_proto(err))


@dataclass(frozen=True)
class ErrorDetails:
    """What a client learns from a failed call: code, message and the unpacked details."""

    code: grpc.StatusCode
    message: str
    error_info: error_details_pb2.ErrorInfo | None = None
    bad_request: error_details_pb2.BadRequest | None = None
    quota_failure: error_details_pb2.QuotaFailure | None = None
    retry_info: error_details_pb2.RetryInfo | None = None
    other: tuple[Any, ...] = field(default=())  # packed ``Any`` details of other types

    @property
    def reason(self) -> str | None:
        return self.error_info.reason if self.error_info is not None else None

    @property
    def retry_after(self) -> float | None:
        if self.retry_info is None:
            return None
        delay = self.retry_info.retry_delay
        return float(delay.seconds + delay.nanos / 1e9)


_KNOWN: dict[str, type[Message]] = {
    "error_info": error_details_pb2.ErrorInfo,
    "bad_request": error_details_pb2.BadRequest,
    "quota_failure": error_details_pb2.QuotaFailure,
    "retry_info": error_details_pb2.RetryInfo,
}


def status_of_call(rpc_error: grpc.RpcError) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` a failed call carried in its trailers, or None when it carried none or one that
    is not its own. The latter when the client cut the trailers (over its metadata limit) and grpc answered
    RESOURCE_EXHAUSTED itself: ``rpc_status.from_call`` then raises ValueError (the details disagree with the
    call's code). The call's own code is the answer; every reader of a call's status goes through here."""
    try:
        status: status_pb2.Status | None = rpc_status.from_call(rpc_error)
    except ValueError:
        return None
    return status


def error_details(rpc_error: grpc.RpcError) -> ErrorDetails:
    """Unpack a failed call (``grpc.aio.AioRpcError`` or a sync ``grpc.Call`` error) into typed details."""
    code: grpc.StatusCode = rpc_error.code()
    message: str = rpc_error.details() or ""
    status = status_of_call(rpc_error)
    if status is None:
        return ErrorDetails(code=code, message=message)
    found: dict[str, Any] = {}
    other: list[Any] = []
    for packed in status.details:
        for name, message_type in _KNOWN.items():
            if name not in found and packed.Is(message_type.DESCRIPTOR):
                unpacked = message_type()
                packed.Unpack(unpacked)
                found[name] = unpacked
                break
        else:
            other.append(packed)
    return ErrorDetails(code=code, message=status.message, other=tuple(other), **found)
