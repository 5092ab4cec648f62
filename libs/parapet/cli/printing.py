"""Shared output of the people-facing commands: protobuf as JSON, times, money, enum names, tables."""

from __future__ import annotations

import codecs
import io
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from parapet.cli.output import render_table


class _Money(Protocol):
    currency_code: str
    amount_micros: int


def as_dict(message: Message) -> dict[str, Any]:
    """Proto3 JSON with the proto's own field names (as in the .proto files and docs)."""
    return MessageToDict(message, preserving_proto_field_name=True)


def tolerate_unencodable_output() -> None:
    """Let stdout show what its encoding cannot as ``?`` instead of raising, and stderr as escapes.

    Python opens stdout strict in the terminal's encoding, so an answer with an ``é`` or an emoji on an ASCII
    or Latin-1 terminal (or ``PYTHONIOENCODING=ascii``) ended the command with a UnicodeEncodeError traceback
    mid-answer. stderr normally escapes such characters (``backslashreplace``) already: a stream given in its
    place (a test's capture) is made to as well, since messages may quote a file name that is not UTF-8.
    """
    for stream, errors in ((sys.stdout, "replace"), (sys.stderr, "backslashreplace")):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            stream.reconfigure(errors=errors)


def _takes_all_text(stream: Any) -> bool:
    try:
        return codecs.lookup(getattr(stream, "encoding", None) or "ascii").name.startswith("utf-")
    except LookupError:
        return False


def print_json(value: Any, *, lines: bool = False) -> None:
    """``value`` (a message or plain data) as JSON on stdout: indented, or one line (JSON Lines).

    Characters stdout cannot encode are written as ``\\u`` escapes: still the same JSON, nothing replaced.
    """
    data = as_dict(value) if isinstance(value, Message) else value
    text = json.dumps(data, indent=None if lines else 2, ensure_ascii=not _takes_all_text(sys.stdout))
    print(text, flush=True)


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]], empty: str = "(none)") -> None:
    print(render_table(header, rows) if rows else empty, flush=True)


def when(ts: Timestamp) -> str:
    """A Timestamp as ``2025-01-31 14:05:09Z``; ``-`` when unset."""
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    return datetime.fromtimestamp(ts.seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def timestamp(moment: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(moment)
    return result


def money(value: _Money) -> str:
    """Exact: micros as a decimal with six places (``0.000125 USD``); ``-`` when no currency is set."""
    if not value.currency_code:
        return "-"
    return f"{Decimal(value.amount_micros).scaleb(-6):.6f} {value.currency_code}"


def enum_label(enum_type: Any, value: int) -> str:
    """A value of a generated enum without its type prefix, lower-case (``TENANT_STATE_ACTIVE`` -> ``active``)."""
    name: str = enum_type.Name(value)
    prefix = _common_prefix(list(enum_type.keys()))
    return name[len(prefix) :].lower() or name.lower()


def _common_prefix(names: Sequence[str]) -> str:
    first = names[0]
    end = 0
    for i in range(len(first)):
        if all(len(n) > i and n[i] == first[i] for n in names):
            end = i + 1
        else:
            break
    # Cut back to a word boundary: TENANT_STATE_ + ACTIVE, never TENANT_STATE_A + CTIVE.
    return first[: first.rfind("_", 0, end) + 1] if "_" in first[:end] else ""
