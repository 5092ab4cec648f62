"""Asking a service for its ``grpc.health.v1`` status, the same way Kubernetes' gRPC probe does."""

from __future__ import annotations

from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = "SERVING"
UNREACHABLE = "UNREACHABLE"


class TlsSetupError(Exception):
    """The ``PARAPET_TLS_*`` settings cannot make credentials; the message names the file or variable."""


def suite_credentials() -> grpc.ChannelCredentials | None:
    """TLS credentials for talking to the suite's services, from the same ``PARAPET_TLS_*`` variables the
    launcher passes on to them (None: plaintext). Services then need certificates valid for 127.0.0.1.

    Raises TlsSetupError for a file that cannot be read or settings that cannot work together (a traceback of
    ``parapet status`` or ``parapet up`` until 2026-12-06).
    """
    from parapet.kit.config import ServiceSettings, load_settings

    try:
        return load_settings(ServiceSettings).tls().channel_credentials()
    except OSError as exc:
        raise TlsSetupError(f"cannot read the TLS file {exc.filename}: {exc.strerror or exc}") from None
    except ValueError as exc:  # SettingsError or TlsConfigError, which name the variables
        raise TlsSetupError(str(exc)) from None


class HealthProber:
    """Probes many addresses, one channel each, reused across probes until ``close``.

    ``credentials`` default to the suite's (``suite_credentials``), so probing works whether the services
    serve plaintext or (mutual) TLS.
    """

    def __init__(self, credentials: grpc.ChannelCredentials | None = None) -> None:
        self._channels: dict[str, grpc.Channel] = {}
        self._credentials = credentials if credentials is not None else suite_credentials()

    def status(self, address: str, *, service: str = "", timeout: float = 1.0) -> str:
        """The ServingStatus name of ``service`` at ``address`` ("" = the server as a whole).

        Returns UNREACHABLE while nothing answers, so callers can poll a process that is starting.
        """
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = (
                grpc.secure_channel(address, self._credentials)
                if self._credentials is not None
                else grpc.insecure_channel(address)
            )
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            return UNREACHABLE if code in (None, grpc.StatusCode.UNAVAILABLE) else f"ERROR {code.name}"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def __enter__(self) -> HealthProber:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
