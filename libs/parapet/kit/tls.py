"""TLS and mutual TLS from certificate files, for running without a service mesh.

A mesh (Istio, Linkerd) usually provides mTLS and the services listen in plaintext behind it. Without one,
each service gets a certificate and key (the same pair serves both directions: its server identity, and
its client identity towards peers) and the CA that signed its peers. With ``require_client_cert`` a server
refuses any caller that does not present a certificate from that CA.

Rotation: the server re-reads the files when they change (checked before each new connection's handshake,
a few ``stat`` calls), so a renewed certificate (cert-manager swaps the mounted Secret's files at once) is
served without a restart; a changed set whose key does not match its certificate (a rotation half
written) is ignored until it is complete. Outgoing channels present the certificate they were created
with: a renewal must leave the previous certificate valid until the processes restart (cert-manager
renews at two thirds of the lifetime by default).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

log = logging.getLogger(__name__)


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
        certificates = ReloadingServerCertificates(self.cert_file, self.key_file, self.ca_file)
        return grpc.dynamic_ssl_server_credentials(
            certificates.current(),
            certificates.fetch,
            require_client_authentication=self.require_client_cert,
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


class ReloadingServerCertificates:
    """The server's certificate configuration, re-read when its files change.

    ``fetch`` is grpc's certificate configuration fetcher: called on a gRPC core thread before every new
    connection's handshake, it returns a new configuration when the files changed (and are consistent),
    else None (keep the current one).
    """

    def __init__(self, cert_file: Path, key_file: Path, ca_file: Path | None) -> None:
        self._files = (cert_file, key_file, *((ca_file,) if ca_file is not None else ()))
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._rejected: tuple[tuple[int, int, int], ...] | None = None
        self._configuration = self._load()  # at start a bad set must fail loudly: raise
        self.reloads = 0

    def current(self) -> grpc.ServerCertificateConfiguration:
        return self._configuration

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        # Following symlinks: a Kubernetes Secret volume swaps a symlink, which changes inode and mtime.
        stats = [os.stat(path) for path in self._files]
        return tuple((st.st_ino, st.st_mtime_ns, st.st_size) for st in stats)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert, key = self._files[0].read_bytes(), self._files[1].read_bytes()
        leaf = x509.load_pem_x509_certificate(cert)
        if leaf.public_key() != load_pem_private_key(key, password=None).public_key():
            raise ValueError(f"{self._files[1]} is not the key of {self._files[0]}")
        ca = self._files[2].read_bytes() if len(self._files) > 2 else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            stamp: tuple[tuple[int, int, int], ...] | None = None
            try:
                stamp = self._stat()
                if stamp == self._stamp:
                    return None
                configuration = self._load()
            except (OSError, ValueError) as exc:
                # Mid-rotation (a file missing, a key not yet matching): keep serving the current set,
                # and say so once per state of the files, not once per connection.
                if stamp != self._rejected:
                    self._rejected = stamp
                    log.warning("TLS certificate files changed but cannot be used yet: %s", exc)
                return None
            self._stamp, self._configuration = stamp, configuration
            self.reloads += 1
            log.info("TLS certificate files reloaded", extra={"cert_file": str(self._files[0])})
            return configuration
