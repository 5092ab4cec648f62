"""The gateway's channels to the services of the flow: opened once per process and reused by every request
(a channel per call would pay a connection handshake on the hot path)."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from parapet import clients
from parapet.kit.clients import ServiceClient
from parapet.kit.errors import Unavailable, to_status_proto
from services.gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from parapet.auth.v1.auth_service_pb2_grpc import AuthServiceAsyncStub
    from parapet.inference.v1.inference_service_pb2_grpc import InferenceServiceAsyncStub
    from parapet.metering.v1.metering_service_pb2_grpc import MeteringServiceAsyncStub
    from parapet.moderation.v1.moderation_service_pb2_grpc import ModerationServiceAsyncStub
    from parapet.retrieval.v1.retrieval_service_pb2_grpc import RetrievalServiceAsyncStub


class _Unconfigured:
    """Stands in for the client of a service whose address is not set: every call fails UNAVAILABLE with the
    variable to set, so a partial deployment (`parapet up --only gateway`) starts and says what is missing.

    It fails the way a call to a service that is down fails (``grpc.aio.AioRpcError``, raised when the call is
    awaited or read), so that the tenant's degradation policy applies to it like to any dependency that is
    down. Raising the gateway's own error at ``stub`` skipped the policy: without a retrieval address every
    chat was refused, where the default policy answers without context."""

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def stub(self) -> Any:
        return _DownStub(self._name)

    async def close(self) -> None:
        pass


class _DownStub:
    """Every method of an unconfigured service's stub: a call that fails UNAVAILABLE."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, method: str) -> Any:
        return lambda *args, **kwargs: _FailedCall(self._name)


class _FailedCall:
    """A unary call (awaited) or a response stream (iterated) that fails UNAVAILABLE, naming the setting."""

    def __init__(self, name: str) -> None:
        self._name = name

    def _error(self) -> grpc.aio.AioRpcError:
        unavailable = Unavailable(
            f"the gateway has no address for the {self._name} service (PARAPET_{self._name.upper()}_ADDRESS)",
            reason="DEPENDENCY_UNAVAILABLE",
            retry_after=5.0,
        )
        status = to_status_proto(unavailable)
        return grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString())),
            details=status.message,
        )

    async def _fail(self) -> Any:
        raise self._error()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._fail().__await__()

    def __aiter__(self) -> _FailedCall:
        return self

    async def __anext__(self) -> Any:
        raise self._error()

    def cancel(self) -> bool:
        return False


def _client(settings: GatewaySettings, name: str, factory: Any, **kw: Any) -> Any:
    address: str | None = getattr(settings, f"{name}_address")
    return factory(address, settings, **kw) if address else _Unconfigured(name)


@dataclass
class Peers:
    auth: ServiceClient[AuthServiceAsyncStub]
    moderation: ServiceClient[ModerationServiceAsyncStub]
    metering: ServiceClient[MeteringServiceAsyncStub]
    retrieval: ServiceClient[RetrievalServiceAsyncStub]
    inference: ServiceClient[InferenceServiceAsyncStub]

    @classmethod
    def open(cls, settings: GatewaySettings) -> Peers:
        # Streams (inference, output screening) run as long as the caller's answer: no default timeout on
        # those channels; every unary call passes its own.
        return cls(
            auth=_client(settings, "auth", clients.auth),
            moderation=_client(settings, "moderation", clients.moderation, default_timeout=None),
            metering=_client(settings, "metering", clients.metering),
            retrieval=_client(settings, "retrieval", clients.retrieval),
            inference=_client(settings, "inference", clients.inference, default_timeout=None),
        )

    async def close(self) -> None:
        for client in (self.auth, self.moderation, self.metering, self.retrieval, self.inference):
            await client.close()
