"""TLS and mutual TLS without a mesh: certificates generated here, real handshakes over loopback."""

from __future__ import annotations

from pathlib import Path

import grpc
import grpc.aio
import pytest

from parapet.kit import clients
from parapet.kit.config import ServiceSettings, SettingsError, load_settings
from parapet.kit.testing import (
    Pki,
    StringValue,
    TestKeys,
    generic_app,
    make_pki,
    running,
    string_service,
    unary_caller,
)

SERVICE = "test.v1.Tls"


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
