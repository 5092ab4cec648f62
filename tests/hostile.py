"""Hostile requests for tests of bad input: every field set to a value that breaks code which trusts its
input (tests/integration/services/test_every_rpc_is_served.py, tests/integration/gateway)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor

from parapet.kit.errors import ErrorDetails

# Values that break code which trusts its input: a NUL (PostgreSQL refuses it in text), quotes, a long string,
# integers and floats at either extreme, an enum number no contract declares, timestamps out of range.
# Each text is tried: the first is refused by the kit at the door (NUL), so the second reaches the servicers.
HOSTILE_TEXTS = ("x\x00'\";--", "'\";--" + "é" * 300)
# Short enough for every length limit, so that a field alone holding it gets past validation.
SHORT_TEXT = "'\";--é%_\\"
_LOW = {
    FieldDescriptor.TYPE_INT32: -(2**31),
    FieldDescriptor.TYPE_SINT32: -(2**31),
    FieldDescriptor.TYPE_SFIXED32: -(2**31),
    FieldDescriptor.TYPE_UINT32: 0,
    FieldDescriptor.TYPE_FIXED32: 0,
    FieldDescriptor.TYPE_INT64: -(2**63),
    FieldDescriptor.TYPE_SINT64: -(2**63),
    FieldDescriptor.TYPE_SFIXED64: -(2**63),
    FieldDescriptor.TYPE_UINT64: 0,
    FieldDescriptor.TYPE_FIXED64: 0,
    FieldDescriptor.TYPE_DOUBLE: float("nan"),
    FieldDescriptor.TYPE_FLOAT: float("-inf"),
}
_HIGH = {
    FieldDescriptor.TYPE_INT32: 2**31 - 1,
    FieldDescriptor.TYPE_SINT32: 2**31 - 1,
    FieldDescriptor.TYPE_SFIXED32: 2**31 - 1,
    FieldDescriptor.TYPE_UINT32: 2**32 - 1,
    FieldDescriptor.TYPE_FIXED32: 2**32 - 1,
    FieldDescriptor.TYPE_INT64: 2**63 - 1,
    FieldDescriptor.TYPE_SINT64: 2**63 - 1,
    FieldDescriptor.TYPE_SFIXED64: 2**63 - 1,
    FieldDescriptor.TYPE_UINT64: 2**64 - 1,
    FieldDescriptor.TYPE_FIXED64: 2**64 - 1,
    FieldDescriptor.TYPE_DOUBLE: float("inf"),
    FieldDescriptor.TYPE_FLOAT: float("inf"),
}


@dataclass(frozen=True)
class Hostility:
    text: str
    numbers: dict[int, float]


def _hostile(message: Any, how: Hostility, depth: int = 0, only: str | None = None) -> Any:
    """``message`` with every field (or only the top-level field ``only``) set to a hostile value, nested
    messages three levels deep."""
    for field in message.DESCRIPTOR.fields:
        if only is not None and field.name != only:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            key = _scalar(key_field, how)
            mapping = getattr(message, field.name)
            if value_field.message_type is not None:
                if depth < 3:
                    _hostile(mapping[key], how, depth + 1)
            else:
                mapping[key] = _scalar(value_field, how)
        elif field.message_type is not None:
            if depth >= 3:
                continue
            if field.is_repeated:
                _hostile(getattr(message, field.name).add(), how, depth + 1)
            else:
                _hostile(getattr(message, field.name), how, depth + 1)
        elif field.is_repeated:
            getattr(message, field.name).extend([_scalar(field, how)] * 2)
        else:
            setattr(message, field.name, _scalar(field, how))
    return message


def _scalar(field: FieldDescriptor, how: Hostility) -> Any:
    if field.type == FieldDescriptor.TYPE_STRING:
        return how.text
    if field.type == FieldDescriptor.TYPE_BYTES:
        return b"\x00\xff" * 40
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    if field.type == FieldDescriptor.TYPE_ENUM:
        return 999  # proto3 enums are open: a number no contract declares
    return how.numbers[field.type]


def hostile_requests(request_type: Any, base: Any = None) -> Iterator[tuple[str, Any]]:
    """(what, request): every field hostile at once, then each top-level field alone (so a check of one
    field does not stop the servicer before it reaches the others), with numbers at either extreme. With
    ``base``, each field alone is made hostile in a copy of ``base`` (a valid request), so the rest of it
    takes the servicer as deep as a real call goes."""
    for text in HOSTILE_TEXTS:
        yield f"all fields, text {text[:6]!r}", _hostile(request_type(), Hostility(text, _LOW))
    for field in request_type.DESCRIPTOR.fields:
        for name, how in (
            ("low, long text", Hostility(HOSTILE_TEXTS[1], _LOW)),
            ("high, short text", Hostility(SHORT_TEXT, _HIGH)),
        ):
            request = request_type()
            if base is not None:
                request.CopyFrom(base)
                request.ClearField(field.name)
            yield f"{field.name} alone, {name}", _hostile(request, how, only=field.name)


def crash(details: ErrorDetails) -> str | None:
    """How an answer to a hostile request is a crash (INTERNAL, UNKNOWN, or no ErrorInfo), or None when it
    is a typed refusal."""
    if details.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return f"{details.code.name} {details.message}"
    if details.error_info is None:
        return f"{details.code.name} without ErrorInfo"
    return None
