"""Servicers for RPCs whose service issue is not done yet: every call answers UNIMPLEMENTED, clearly.

The contracts of all services are published at once, before every service's logic exists. A generated
servicer base would answer a missing method with a bare ``NotImplementedError`` (INTERNAL to the caller),
and grpc itself answers an unregistered one with an anonymous "Method not found". Neither tells a caller
what is going on, so a pending RPC raises :class:`~parapet.kit.errors.Unimplemented` naming the method and
the issue that brings it; the errors interceptor turns that into a status with ``ErrorInfo``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc.aio
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from parapet.kit.errors import Unimplemented

ServicerT = TypeVar("ServicerT")


def _pending_error(method: MethodDescriptor, issue: str) -> Unimplemented:
    return Unimplemented(
        f"{method.containing_service.full_name}/{method.name} is not implemented yet; it arrives with {issue}.",
        metadata={"method": f"/{method.containing_service.full_name}/{method.name}", "issue": issue},
    )


def _behavior(method: MethodDescriptor, issue: str) -> Callable[..., Any]:
    if method.server_streaming:

        async def stream(self: object, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            raise _pending_error(method, issue)
            yield  # pragma: no cover - makes this an async generator, the shape of a streaming handler

        return stream

    async def unary(self: object, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise _pending_error(method, issue)

    return unary


def pending_servicer(base: type[ServicerT], service: ServiceDescriptor, issue: str) -> ServicerT:
    """An instance of the generated ``base`` whose every RPC of ``service`` answers UNIMPLEMENTED.

    ``issue`` names where the implementation comes from, e.g. ``"issue #8 (metering and billing)"``.
    """
    methods = {method.name: _behavior(method, issue) for method in service.methods}
    cls = type(f"Pending{service.name}", (base,), methods)
    return cls()  # type: ignore[no-any-return]


class GeneratedService:
    """A service of the generated code: its descriptor, servicer base class and registration function."""

    def __init__(self, pb2: Any, pb2_grpc: Any, name: str) -> None:
        self.descriptor: ServiceDescriptor = pb2.DESCRIPTOR.services_by_name[name]
        self.servicer_base: type = getattr(pb2_grpc, f"{name}Servicer")
        self._add: Callable[[Any, grpc.aio.Server], None] = getattr(pb2_grpc, f"add_{name}Servicer_to_server")

    @property
    def full_name(self) -> str:
        return str(self.descriptor.full_name)

    def add(self, servicer: Any, server: grpc.aio.Server) -> None:
        self._add(servicer, server)


def register_pending(
    services: tuple[GeneratedService, ...], issue: str
) -> Callable[[grpc.aio.Server, Any], Awaitable[None]]:
    """A ``ServiceApp.register`` that serves every RPC of ``services`` as pending until ``issue``."""

    async def register(server: grpc.aio.Server, resources: Any) -> None:
        for service in services:
            service.add(pending_servicer(service.servicer_base, service.descriptor, issue), server)

    return register
