"""Structured logging: stdlib ``logging`` with a JSON formatter that adds trace, request and tenant ids.

Every record carries the current OpenTelemetry trace and span ids and the request id and tenant from
the RPC's contextvars, so one grep (or one query in a log store) joins logs to traces and follows a
request across services. Extra fields are passed the stdlib way: ``log.info("msg", extra={"k": v})``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from typing import Any, Literal, TextIO

from opentelemetry import trace

from parapet.kit.context import principal_var, request_id_var

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class OncePer:
    """Whether a repeated log line is due: at most once per ``seconds`` for each key, so an outage or a flood
    stays visible without a line per attempt. Bounded: past ``max_keys`` keys all are forgotten (each next line
    is then due again)."""

    def __init__(self, seconds: float, *, max_keys: int = 10_000) -> None:
        self._seconds = seconds
        self._max_keys = max_keys
        self._last: dict[str, float] = {}  # key -> when its line was last due (monotonic)

    def due(self, key: str = "") -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -math.inf) < self._seconds:
            return False
        if len(self._last) >= self._max_keys:
            self._last.clear()
        self._last[key] = now
        return True


def context_fields() -> dict[str, Any]:
    """Trace/span ids and request/tenant ids of the current context (only those that are set)."""
    fields: dict[str, Any] = {}
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        fields["trace_id"] = format(span_context.trace_id, "032x")
        fields["span_id"] = format(span_context.span_id, "016x")
    request_id = request_id_var.get()
    if request_id is not None:
        fields["request_id"] = request_id
    principal = principal_var.get()
    if principal is not None:
        fields["tenant"] = principal.tenant_id
    return fields


class ContextFilter(logging.Filter):
    """Copies the context fields onto the record when it is created, in the task that logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in context_fields().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event (the message), then every extra field."""

    def __init__(self, service: str | None = None) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        if self._service:
            entry["service"] = self._service
        for name, value in record.__dict__.items():
            if name not in _STANDARD_ATTRS and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """For humans: the usual line, then ``key=value`` for the extra fields."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{name}={value}"
            for name, value in record.__dict__.items()
            if name not in _STANDARD_ATTRS and not name.startswith("_")
        ]
        if extras:
            first, newline, rest = line.partition("\n")
            line = first + " " + " ".join(extras) + newline + rest
        return line


def configure_logging(
    level: str = "INFO",
    fmt: Literal["json", "text"] = "json",
    *,
    service: str | None = None,
    stream: TextIO | None = None,
) -> None:
    """Send the root logger to ``stream`` (stderr: stdout is kept for the serving announcement)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
