"""TLS and mutual TLS without a mesh: certificates generated here, real handshakes over loopback."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from parapet.kit import clients
from parapet.kit.config import ServiceSettings, SettingsError, load_settings
from parapet.kit.testing import StringValue, TestKeys, generic_app, running, string_service, unary_caller

SERVICE = "test.v1.Tls"


@dataclass(frozen=True)
class Pki:
    """A CA and a service certificate it signed, as PEM files."""

    ca: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(directory: Path, label: str) -> Pki:
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


async def _echo(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
    return request


def _settings(pki: Pki, *, require_client_cert: bool) -> ServiceSettings:
    return ServiceSettings(
        port=0,
        tls_cert_file=pki.cert,
        tls_key_file=pki.key,
        tls_ca_file=pki.ca,
        tls_require_client_cert=require_client_cert,
        shutdown_grace_seconds=0.5,
    )


async def _call(channel: grpc.aio.Channel, keys: TestKeys) -> str:
    response = await unary_caller(channel, f"/{SERVICE}/Echo")(
        StringValue(value="hello"), metadata=keys.metadata(), timeout=5
    )
    return str(response.value)


async def test_mutual_tls_admits_only_callers_with_a_certificate_from_the_ca(
    tmp_path: Path, keys: TestKeys
) -> None:
    pki = make_pki(tmp_path / "ours", "parapet")
    stranger = make_pki(tmp_path / "other", "stranger")
    app = generic_app(string_service(SERVICE, unary={"Echo": _echo}), keys=keys, service_names=(SERVICE,))
    async with running(app, _settings(pki, require_client_cert=True)) as (_, port):
        target = f"localhost:{port}"
        # A peer configured like the server (same CA, its own certificate) gets through: the kit channel.
        async with clients.channel(target, _settings(pki, require_client_cert=True)) as good:
            assert await _call(good, keys) == "hello"

        refused = [
            # Verifies the server but presents no certificate.
            grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(pki.ca.read_bytes())),
            # Presents a certificate from another CA.
            grpc.aio.secure_channel(
                target,
                grpc.ssl_channel_credentials(
                    pki.ca.read_bytes(), stranger.key.read_bytes(), stranger.cert.read_bytes()
                ),
            ),
            # Plaintext.
            grpc.aio.insecure_channel(target),
        ]
        for channel in refused:
            async with channel:
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await _call(channel, keys)
                assert error.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_server_tls_without_client_certificates_and_client_verifies_the_server(
    tmp_path: Path, keys: TestKeys
) -> None:
    pki = make_pki(tmp_path / "ours", "parapet")
    stranger = make_pki(tmp_path / "other", "stranger")
    app = generic_app(string_service(SERVICE, unary={"Echo": _echo}), keys=keys, service_names=(SERVICE,))
    async with running(app, _settings(pki, require_client_cert=False)) as (_, port):
        target = f"localhost:{port}"
        async with grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(pki.ca.read_bytes())) as ok:
            assert await _call(ok, keys) == "hello"
        # A client trusting another CA refuses the server's certificate.
        wrong_ca = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(stranger.ca.read_bytes()))
        async with wrong_ca:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await _call(wrong_ca, keys)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_impossible_tls_settings_are_refused_when_settings_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = make_pki(tmp_path, "parapet")
    monkeypatch.setenv("PARAPET_TLS_CERT_FILE", str(pki.cert))
    with pytest.raises(SettingsError, match="PARAPET_TLS_KEY_FILE"):
        load_settings(ServiceSettings)
    monkeypatch.setenv("PARAPET_TLS_KEY_FILE", str(pki.key))
    monkeypatch.setenv("PARAPET_TLS_REQUIRE_CLIENT_CERT", "true")
    with pytest.raises(SettingsError, match="PARAPET_TLS_CA_FILE"):
        load_settings(ServiceSettings)
    monkeypatch.setenv("PARAPET_TLS_CA_FILE", str(pki.ca))
    assert load_settings(ServiceSettings).tls().require_client_cert
