"""Requests whose text holds U+0000 (NUL) are refused at the door, naming the field.

PostgreSQL cannot store NUL in text or jsonb, and no contract of ours gives it a meaning. Let through, it
fails deep inside a service as a database error, where it turned into INTERNAL, or worse, into an event no
consumer can ever store (an audit record that blocked the audit stream behind it). So the kit's server
interceptor refuses it for every RPC, before the servicer runs: INVALID_ARGUMENT with the field's path.
Bytes fields are not text and are left alone. A provider's answer is not refused but repaired
(:func:`replace_nul`, in inference, before anyone sees it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from parapet.kit.errors import InvalidArgument

NUL = "\x00"
REPLACEMENT = "\ufffd"  # U+FFFD REPLACEMENT CHARACTER: what a NUL becomes in text we must keep


def replace_nul(text: str) -> str:
    """``text`` with each U+0000 replaced by U+FFFD: for text we did not take from a caller and cannot refuse
    (a provider's answer), which the caller, the cache and the audit trail must all see alike."""
    return text.replace(NUL, REPLACEMENT) if NUL in text else text


# How each field is walked, computed once per field descriptor (reading its options per call costs more
# than the walk itself).
_TEXT, _MESSAGE, _MAP_TEXT, _MAP_MESSAGE, _MAP_OTHER, _SKIP = range(6)
_KINDS: dict[FieldDescriptor, tuple[int, bool]] = {}  # field -> (kind, string keys); map kinds only use keys


def _kind(field: FieldDescriptor) -> tuple[int, bool]:
    known = _KINDS.get(field)
    if known is not None:
        return known
    if field.type == FieldDescriptor.TYPE_STRING:
        kind = (_TEXT, False)
    elif field.type != FieldDescriptor.TYPE_MESSAGE:
        kind = (_SKIP, False)
    elif (entry := field.message_type) is not None and entry.GetOptions().map_entry:
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        string_keys = key.type == FieldDescriptor.TYPE_STRING
        if value.type == FieldDescriptor.TYPE_STRING:
            kind = (_MAP_TEXT, string_keys)
        elif value.type == FieldDescriptor.TYPE_MESSAGE:
            kind = (_MAP_MESSAGE, string_keys)
        else:
            kind = (_MAP_OTHER, string_keys)
    else:
        kind = (_MESSAGE, False)
    _KINDS[field] = kind
    return kind


def nul_field(message: Message, prefix: str = "") -> str | None:
    """The path of the first text field of ``message`` (at any depth) that holds U+0000, or None."""
    for field, value in message.ListFields():  # only fields that are set: cheap on small requests
        kind, string_keys = _kind(field)
        if kind == _SKIP:
            continue
        name = prefix + field.name
        if kind == _TEXT:
            if field.is_repeated:
                for index, text in enumerate(value):
                    if NUL in text:
                        return f"{name}[{index}]"
            elif NUL in value:
                return name
        elif kind == _MESSAGE:
            if field.is_repeated:
                for index, item in enumerate(value):
                    found = nul_field(item, f"{name}[{index}].")
                    if found is not None:
                        return found
            else:
                found = nul_field(value, name + ".")
                if found is not None:
                    return found
        else:
            for key, item in value.items():
                if string_keys and NUL in key:
                    return f"{name}[{key!r}]"
                if kind == _MAP_TEXT and NUL in item:
                    return f"{name}[{key!r}]"
                if kind == _MAP_MESSAGE:
                    found = nul_field(item, f"{name}[{key!r}].")
                    if found is not None:
                        return found
    return None


def refuse_nul(message: Message) -> None:
    """INVALID_ARGUMENT naming the field when any text of ``message`` holds U+0000."""
    path = nul_field(message)
    if path is not None:
        raise InvalidArgument(
            f"{path} contains the character U+0000 (NUL), which no text field accepts",
            field_violations=[(path, "contains U+0000 (NUL)")],
        )


async def refusing_nul(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A client stream's messages, each checked as it arrives (the servicer sees the error where it reads)."""
    async for request in requests:
        refuse_nul(request)
        yield request


def checked(request: Any) -> Any:
    """``request`` checked now (a message) or as it is read (a client stream's iterator)."""
    if isinstance(request, Message):
        refuse_nul(request)
        return request
    return refusing_nul(request)
