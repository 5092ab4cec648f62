"""One structured log line per RPC: method, code, reason, duration, peer, tenant, request id, trace id;
and the request id itself.

The request id is the caller's ``x-request-id`` when it sent a sane one, else a new one, so a request
keeps one id across every service it touches; on the edge methods (called from outside the suite) always a
new one. The line is written while the RPC's trace context is still current, so it carries the trace id.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any

from parapet.kit.context import RpcInfo

log = logging.getLogger("parapet.rpc")

REQUEST_ID_KEY = "x-request-id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_LOUD_CODES = frozenset({"INTERNAL", "UNKNOWN", "DATA_LOSS"})


def is_sane_request_id(value: Any) -> bool:
    return isinstance(value, str) and _SANE_REQUEST_ID.fullmatch(value) is not None


def new_request_id() -> str:
    """128 random bits as 32 hex digits (services use request ids as idempotency keys)."""
    return secrets.token_hex(16)


def log_rpc(info: RpcInfo, seconds: float, *, quiet: bool) -> None:
    """The RPC's line. ``quiet`` methods (probes, tooling) log a success at DEBUG so a kubelet probing
    every few seconds does not drown the log. The fields are built only when the level is enabled."""
    code = info.code or "OK"
    level = (
        logging.DEBUG if quiet and code == "OK" else logging.ERROR if code in _LOUD_CODES else logging.INFO
    )
    if not log.isEnabledFor(level):
        return
    log.log(
        level,
        "rpc",
        extra={
            "method": info.method,
            "code": code,
            "reason": info.reason,
            "duration_ms": round(seconds * 1000, 3),
            "peer": info.peer,
            "client_request_id": info.client_request_id,
            "tenant": info.tenant_id,
            "subject": info.subject,
        },
    )
