"""What the kit refuses in every request before the servicer runs, naming the field: text holding U+0000 (NUL),
and enum numbers the enum does not declare.

PostgreSQL cannot store NUL in text or jsonb, and no contract of ours gives it a meaning. Let through, it
fails deep inside a service as a database error, where it turned into INTERNAL, or worse, into an event no
consumer can ever store (an audit record that blocked the audit stream behind it). Bytes fields are not text
and are left alone. A provider's answer is not refused but repaired (:func:`replace_nul`, in inference, before
anyone sees it).

proto3 enums are open: a number no value declares (a client built from a newer contract, or garbage) parses
fine and would reach the servicer, which reads it as whatever its code falls back to: a silent default. The
kit refuses it instead. Methods that take records of facts written by newer releases of other services (the
audit trail's Record) keep such numbers as they are: a service names them in ``ServiceApp.open_enum_methods``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from parapet.kit.errors import InvalidArgument

NUL = "\x00"
REPLACEMENT = "\ufffd"  # U+FFFD REPLACEMENT CHARACTER: what a NUL becomes in text we must keep


def replace_nul(text: str) -> str:
    """``text`` with each U+0000 replaced by U+FFFD: for text we did not take from a caller and cannot refuse
    (a provider's answer), which the caller, the cache and the audit trail must all see alike."""
    return text.replace(NUL, REPLACEMENT) if NUL in text else text


# How each field is walked, computed once per field descriptor (reading its options per call costs more
# than the walk itself).
_TEXT, _ENUM, _MESSAGE, _MAP_TEXT, _MAP_ENUM, _MAP_MESSAGE, _MAP_OTHER, _SKIP = range(8)


class _Walk(NamedTuple):
    kind: int
    string_keys: bool = False  # map kinds: whether the keys are text
    enum: EnumDescriptor | None = None  # _ENUM and _MAP_ENUM: the enum the numbers must belong to


_WALKS: dict[FieldDescriptor, _Walk] = {}


def _walk(field: FieldDescriptor) -> _Walk:
    known = _WALKS.get(field)
    if known is not None:
        return known
    entry = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None
    if field.type == FieldDescriptor.TYPE_STRING:
        walk = _Walk(_TEXT)
    elif field.type == FieldDescriptor.TYPE_ENUM:
        walk = _Walk(_ENUM, enum=field.enum_type)
    elif entry is None:
        walk = _Walk(_SKIP)
    elif entry.GetOptions().map_entry:
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        string_keys = key.type == FieldDescriptor.TYPE_STRING
        if value.type == FieldDescriptor.TYPE_STRING:
            walk = _Walk(_MAP_TEXT, string_keys)
        elif value.type == FieldDescriptor.TYPE_ENUM:
            walk = _Walk(_MAP_ENUM, string_keys, value.enum_type)
        elif value.type == FieldDescriptor.TYPE_MESSAGE:
            walk = _Walk(_MAP_MESSAGE, string_keys)
        else:
            walk = _Walk(_MAP_OTHER, string_keys)
    else:
        walk = _Walk(_MESSAGE)
    _WALKS[field] = walk
    return walk


def _undeclared(enum: EnumDescriptor, number: int) -> bool:
    return number not in enum.values_by_number


@dataclass(frozen=True)
class Violation:
    """What is wrong with a request, and where: text holding U+0000, or an enum number its enum does not declare."""

    path: str
    enum: str = ""  # the enum's full name, for an undeclared number; "" for a NUL

    def error(self) -> InvalidArgument:
        if not self.enum:
            return InvalidArgument(
                f"{self.path} contains the character U+0000 (NUL), which no text field accepts",
                field_violations=[(self.path, "contains U+0000 (NUL)")],
            )
        return InvalidArgument(
            f"{self.path} is not a value {self.enum} declares",
            field_violations=[(self.path, f"not a {self.enum.rsplit('.', 1)[-1]}")],
        )


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request message that did not parse: a text field that is not UTF-8 (a multi-byte character cut
    between two stream chunks by a client that does not check), or a corrupt wire format. grpc answered a
    deserializer's exception UNKNOWN with the parser's message, before authentication and untyped; the
    parser's exception met in a client stream became INTERNAL. :func:`tolerant` hands this to the kit
    instead, which refuses it like any bad request, after authenticating the caller."""

    problem: str

    def error(self) -> InvalidArgument:
        return InvalidArgument(f"the request message does not parse: {self.problem}")


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` answering :class:`Malformed` where it raised."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return Malformed("a text field is not UTF-8, or the wire format is corrupt")

    return deserialize


def violation(
    message: Message, prefix: str = "", *, text: bool = True, enums: bool = True
) -> Violation | None:
    """The first field of ``message`` (at any depth) whose text holds U+0000 (with ``text``) or whose enum
    number is undeclared (with ``enums``); None when there is none."""
    for field, value in message.ListFields():  # only fields that are set: cheap on small requests
        kind, string_keys, enum = _walk(field)
        if kind == _SKIP or (kind == _ENUM and not enums) or (kind == _TEXT and not text):
            continue
        name = prefix + field.name
        if kind == _TEXT:
            if field.is_repeated:
                for index, item in enumerate(value):
                    if NUL in item:
                        return Violation(f"{name}[{index}]")
            elif NUL in value:
                return Violation(name)
        elif kind == _ENUM:
            assert enum is not None
            if field.is_repeated:
                for index, number in enumerate(value):
                    if _undeclared(enum, number):
                        return Violation(f"{name}[{index}]", enum.full_name)
            elif _undeclared(enum, value):
                return Violation(name, enum.full_name)
        elif kind == _MESSAGE:
            if field.is_repeated:
                for index, item in enumerate(value):
                    found = violation(item, f"{name}[{index}].", text=text, enums=enums)
                    if found is not None:
                        return found
            else:
                found = violation(value, name + ".", text=text, enums=enums)
                if found is not None:
                    return found
        else:
            for key, item in value.items():
                if text and string_keys and NUL in key:
                    return Violation(f"{name}[{key!r}]")
                if text and kind == _MAP_TEXT and NUL in item:
                    return Violation(f"{name}[{key!r}]")
                if enums and kind == _MAP_ENUM and enum is not None and _undeclared(enum, item):
                    return Violation(f"{name}[{key!r}]", enum.full_name)
                if kind == _MAP_MESSAGE:
                    found = violation(item, f"{name}[{key!r}].", text=text, enums=enums)
                    if found is not None:
                        return found
    return None


def nul_field(message: Message, prefix: str = "") -> str | None:
    """The path of the first text field of ``message`` (at any depth) that holds U+0000, or None."""
    found = violation(message, prefix, enums=False)
    return None if found is None else found.path


def refuse(message: Message | Malformed, *, text: bool = True, enums: bool = True) -> None:
    """INVALID_ARGUMENT naming the field when any text of ``message`` holds U+0000 (with ``text``) or an enum
    field holds a number its enum does not declare (with ``enums``); without a field when it did not parse."""
    if isinstance(message, Malformed):
        raise message.error()
    if not (text or enums):
        return  # a method that checks both itself: only whether it parsed is the kit's
    found = violation(message, text=text, enums=enums)
    if found is not None:
        raise found.error()


async def refusing(requests: AsyncIterator[Any], *, text: bool, enums: bool) -> AsyncIterator[Any]:
    """A client stream's messages, each checked as it arrives (the servicer sees the error where it reads)."""
    async for request in requests:
        refuse(request, text=text, enums=enums)
        yield request


def checked(request: Any, *, text: bool = True, enums: bool = True) -> Any:
    """``request`` checked now (a message) or as it is read (a client stream's iterator)."""
    if isinstance(request, Message | Malformed):
        refuse(request, text=text, enums=enums)
        return request
    return refusing(request, text=text, enums=enums)
