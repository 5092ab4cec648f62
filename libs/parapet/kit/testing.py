"""Helpers for tests of the kit and of services: signing keys, running a server, tiny generic services.

Shipped in the kit (not under ``tests/``) so every service's tests use the same helpers instead of
copying them.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf import wrappers_pb2

from parapet.kit.app import Resources, ServiceApp
from parapet.kit.config import ServiceSettings, SettingsT
from parapet.kit.errors import ErrorDetails, error_details
from parapet.kit.identity import Principal, StaticJwks, TokenSigner, generate_signing_key
from parapet.kit.server import KitServer, create_server

StringValue = wrappers_pb2.StringValue


@dataclass
class TestKeys:
    """An identity signing key with its signer and a key source that trusts it."""

    __test__ = False  # not a pytest test class

    private_key: Ed25519PrivateKey
    jwk: dict[str, str]
    signer: TokenSigner
    principal: Principal = field(
        default_factory=lambda: Principal(tenant_id="tenant-a", subject="user-1", roles=("member",))
    )

    @property
    def kid(self) -> str:
        return self.jwk["kid"]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk]}

    def key_source(self) -> StaticJwks:
        return StaticJwks(self.jwks())

    def token(self, principal: Principal | None = None, **kwargs: Any) -> str:
        return self.signer.sign(principal or self.principal, **kwargs)

    def metadata(self, principal: Principal | None = None) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying a valid token."""
        return (("authorization", f"Bearer {self.token(principal)}"),)


def make_test_keys(
    kid: str = "test-key", *, issuer: str = "parapet-auth", audience: str = "parapet"
) -> TestKeys:
    private_key, jwk = generate_signing_key(kid)
    return TestKeys(private_key, jwk, TokenSigner(private_key, kid, issuer=issuer, audience=audience))


@asynccontextmanager
async def running(
    app: ServiceApp[SettingsT], settings: SettingsT, *, grace: float = 1.0, **kwargs: Any
) -> AsyncIterator[tuple[KitServer[SettingsT], int]]:
    """Create and start ``app`` on its configured (usually 0) port; stop it on exit."""
    server, port = await create_server(app, settings, **kwargs)
    await server.start()
    try:
        yield server, port
    finally:
        await server.stop(grace)


UnaryFn = Callable[[StringValue, grpc.aio.ServicerContext], Awaitable[StringValue]]
StreamFn = Callable[[StringValue, grpc.aio.ServicerContext], AsyncIterator[StringValue]]


def string_service(
    service_name: str,
    unary: Mapping[str, UnaryFn] | None = None,
    server_streaming: Mapping[str, StreamFn] | None = None,
) -> grpc.GenericRpcHandler:
    """A service of ``StringValue -> StringValue`` methods, for tests that need no generated stubs."""
    handlers: dict[str, Any] = {}
    codec = {
        "request_deserializer": StringValue.FromString,
        "response_serializer": StringValue.SerializeToString,
    }
    for name, fn in (unary or {}).items():
        handlers[name] = grpc.unary_unary_rpc_method_handler(fn, **codec)
    for name, stream_fn in (server_streaming or {}).items():
        handlers[name] = grpc.unary_stream_rpc_method_handler(stream_fn, **codec)
    return grpc.method_handlers_generic_handler(service_name, handlers)


def unary_caller(channel: grpc.aio.Channel, method: str) -> Any:
    """A callable for the ``StringValue`` unary ``method`` (``/pkg.Service/Method``) on ``channel``."""
    return channel.unary_unary(
        method, request_serializer=StringValue.SerializeToString, response_deserializer=StringValue.FromString
    )


def stream_caller(channel: grpc.aio.Channel, method: str) -> Any:
    """A callable for the ``StringValue`` server-streaming ``method`` on ``channel``."""
    return channel.unary_stream(
        method, request_serializer=StringValue.SerializeToString, response_deserializer=StringValue.FromString
    )


def generic_app(
    *handlers: grpc.GenericRpcHandler,
    name: str = "testsvc",
    service_names: tuple[str, ...] = ("test.v1.Test",),
    keys: TestKeys | None = None,
    **app_kwargs: Any,
) -> ServiceApp[ServiceSettings]:
    """A ServiceApp serving ``handlers``; tokens signed by ``keys`` are trusted when given."""

    async def register(server: grpc.aio.Server, resources: Resources[ServiceSettings]) -> None:
        server.add_generic_rpc_handlers(handlers)

    key_source = (lambda _settings: keys.key_source()) if keys is not None else None
    return ServiceApp(
        name=name,
        settings_type=ServiceSettings,
        register=register,
        service_names=service_names,
        key_source=key_source,
        **app_kwargs,
    )


def fast_settings(**overrides: Any) -> ServiceSettings:
    """Settings for tests: port 0, fast health probing, short grace."""
    values: dict[str, Any] = {
        "port": 0,
        "health_interval_seconds": 0.2,
        "health_probe_timeout_seconds": 0.5,
        "shutdown_grace_seconds": 2.0,
        "nats_reconnect_wait_seconds": 0.2,
    }
    values.update(overrides)
    return ServiceSettings(**values)


async def health_status(channel: grpc.aio.Channel, service: str = "") -> int:
    """The ``grpc.health.v1`` Check status of ``service`` over ``channel``."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=2
    )
    return int(response.status)


#: What ``refusal`` returns for a page token reused with another query or by another caller (``kit.paging``).
PAGE_TOKEN_REFUSED = (grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID", ["page_token"])


async def refusal(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str | None, list[str]]:
    """How a unary call that must fail failed: its code, its ``ErrorInfo`` reason and the fields its
    ``BadRequest`` names (AssertionError when it succeeded)."""
    details = await refusal_details(call)
    fields = [v.field for v in details.bad_request.field_violations] if details.bad_request else []
    return details.code, details.reason, fields


async def refusal_details(call: Awaitable[Any]) -> ErrorDetails:
    """All that a unary call that must fail said of its failure: code, message and every detail (quota
    violations, retry info, metadata...), where ``refusal`` gives the code, reason and fields only
    (AssertionError when it succeeded)."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error_details(error)
    raise AssertionError("the call succeeded")


@dataclass(frozen=True)
class Pki:
    """A CA and a service certificate it signed, as PEM files."""

    ca: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(directory: Path, label: str) -> Pki:
    """A fresh CA and a certificate it signed for localhost and 127.0.0.1 (server and client use)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{label} test CA"))
        .issuer_name(_name(f"{label} test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{label}-service"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pki
