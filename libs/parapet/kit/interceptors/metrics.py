"""RPC metrics for every service: a latency histogram by method and status code, errors by type.

Recorded with the status code the caller receives. Health and reflection calls are not recorded: a probe
every second would only add noise. The labelled children are looked up once per method and code, not per
call (``labels()`` takes a lock and builds a key each time).
"""

from __future__ import annotations

from typing import Any

from parapet.kit import metrics


class RpcMetrics:
    def __init__(self) -> None:
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def observe(self, method: str, code: str, seconds: float) -> None:
        children = self._children.get((method, code))
        if children is None:
            children = self._children[(method, code)] = metrics.rpc_children(method, code)
        duration, errors = children
        duration.observe(seconds)
        if errors is not None:
            errors.inc()
