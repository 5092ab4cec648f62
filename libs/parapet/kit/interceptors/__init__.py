"""The kit's server interceptors, applied in this order (outermost first) after OpenTelemetry's:
logging (request id, one line per RPC) → metrics (latency and errors by method and code) → errors
(exceptions to status) → deadline → identity.

Errors sits outside deadline and identity so that their rejections become rich statuses too.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc.aio

from parapet.kit.identity import TokenVerifier
from parapet.kit.interceptors.deadline import DeadlineInterceptor
from parapet.kit.interceptors.errors import ErrorsInterceptor
from parapet.kit.interceptors.identity import ALWAYS_PUBLIC_PREFIXES, IdentityInterceptor
from parapet.kit.interceptors.logging import LoggingInterceptor
from parapet.kit.interceptors.metrics import MetricsInterceptor


def kit_interceptors(
    verifier: TokenVerifier, public_methods: Iterable[str]
) -> list[grpc.aio.ServerInterceptor]:
    """The kit's interceptors in the order they must run."""
    public = frozenset(public_methods)
    return [
        LoggingInterceptor(edge_methods=public),
        MetricsInterceptor(),
        ErrorsInterceptor(),
        DeadlineInterceptor(),
        IdentityInterceptor(verifier, public),
    ]


__all__ = [
    "ALWAYS_PUBLIC_PREFIXES",
    "DeadlineInterceptor",
    "ErrorsInterceptor",
    "IdentityInterceptor",
    "LoggingInterceptor",
    "MetricsInterceptor",
    "kit_interceptors",
]
