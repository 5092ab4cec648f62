"""The kit's server interceptor (``server.KitServerInterceptor``) and the steps it runs, one module each:
tracing (``parapet.kit.rpc_tracing``), request id and log line (``logging``), metrics (``metrics``),
errors to rich statuses (``errors``), deadline (``deadline``) and identity (``identity``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc.aio

from parapet.kit.identity import TokenVerifier
from parapet.kit.interceptors.identity import ALWAYS_PUBLIC_PREFIXES
from parapet.kit.interceptors.server import KitServerInterceptor
from parapet.kit.rpc_tracing import ServerTracing


def kit_interceptors(
    verifier: TokenVerifier,
    public_methods: Iterable[str],
    tracer_provider: Any,
    *,
    nul_checked_by_servicer: Iterable[str] = (),
    open_enum_methods: Iterable[str] = (),
) -> list[grpc.aio.ServerInterceptor]:
    """The kit's server interceptors (one, fused), tracing as ``tracer_provider`` warrants."""
    tracing = ServerTracing(tracer_provider)
    return [
        KitServerInterceptor(verifier, public_methods, tracing, nul_checked_by_servicer, open_enum_methods)
    ]


__all__ = ["ALWAYS_PUBLIC_PREFIXES", "KitServerInterceptor", "kit_interceptors"]
