"""TLS and mutual TLS from certificate files, for running without a service mesh.

A mesh (Istio, Linkerd) usually provides mTLS and the services listen in plaintext behind it. Without one,
each service gets a certificate and key (the same pair serves both directions: its server identity, and
its client identity towards peers) and the CA that signed its peers. With ``require_client_cert`` a server
refuses any caller that does not present a certificate from that CA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsConfigError(ValueError):
    """Certificate settings that cannot work together; the message says which and why."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: this service's certificate chain and private key, and the CA that signs its peers."""

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    require_client_cert: bool = False

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise TlsConfigError("PARAPET_TLS_CERT_FILE and PARAPET_TLS_KEY_FILE must be set together")
        if self.require_client_cert and (self.cert_file is None or self.ca_file is None):
            raise TlsConfigError(
                "PARAPET_TLS_REQUIRE_CLIENT_CERT needs PARAPET_TLS_CERT_FILE, PARAPET_TLS_KEY_FILE "
                "and PARAPET_TLS_CA_FILE (the CA client certificates must chain to)"
            )

    @property
    def serves_tls(self) -> bool:
        return self.cert_file is not None

    @property
    def dials_tls(self) -> bool:
        """Outgoing calls use TLS when a CA to verify peers with is configured."""
        return self.ca_file is not None

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS (or mTLS) credentials for the listening port; None when no certificate is configured."""
        if self.cert_file is None or self.key_file is None:
            return None
        return grpc.ssl_server_credentials(
            [(self.key_file.read_bytes(), self.cert_file.read_bytes())],
            root_certificates=self.ca_file.read_bytes() if self.ca_file is not None else None,
            require_client_auth=self.require_client_cert,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """Credentials for calls to peers: verify them against the CA and present our own certificate."""
        if self.ca_file is None:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=self.key_file.read_bytes() if self.key_file is not None else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert_file is not None else None,
        )
