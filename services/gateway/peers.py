"""The gateway's channels to the services of the flow: opened once per process and reused by every request
(a channel per call would pay a connection handshake on the hot path)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from parapet import clients
from parapet.kit.clients import ServiceClient
from parapet.kit.errors import Unavailable
from services.gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from parapet.auth.v1.auth_service_pb2_grpc import AuthServiceAsyncStub
    from parapet.inference.v1.inference_service_pb2_grpc import InferenceServiceAsyncStub
    from parapet.metering.v1.metering_service_pb2_grpc import MeteringServiceAsyncStub
    from parapet.moderation.v1.moderation_service_pb2_grpc import ModerationServiceAsyncStub
    from parapet.retrieval.v1.retrieval_service_pb2_grpc import RetrievalServiceAsyncStub


class _Unconfigured:
    """Stands in for the client of a service whose address is not set: every use is UNAVAILABLE with the
    variable to set, so a partial deployment (`parapet up --only gateway`) starts and says what is missing."""

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def stub(self) -> Any:
        raise Unavailable(
            f"the gateway has no address for the {self._name} service (PARAPET_{self._name.upper()}_ADDRESS)",
            reason="DEPENDENCY_UNAVAILABLE",
            retry_after=5.0,
        )

    async def close(self) -> None:
        pass


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
