"""TLS and mutual TLS without a mesh: certificates generated here, real handshakes over loopback."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2

from parapet.kit import clients
from parapet.kit.config import ServiceSettings, SettingsError, load_settings
from parapet.kit.testing import (
    Pki,
    StringValue,
    TestKeys,
    generic_app,
    health_status,
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


async def test_health_port_answers_probes_without_a_certificate_and_serves_nothing_else(
    tmp_path: Path, keys: TestKeys
) -> None:
    """The kubelet's gRPC probe presents no certificate: under mTLS it gets SERVING on the health port."""
    pki = make_pki(tmp_path / "ours", "parapet")
    app = generic_app(string_service(SERVICE, unary={"Echo": _echo}), keys=keys, service_names=(SERVICE,))
    settings = _settings(pki, require_client_cert=True).model_copy(update={"health_port": 0})
    async with running(app, settings) as (server, port):
        assert server.health_port is not None and server.health_port != port
        # The main port refuses a plaintext caller, even for health.
        async with grpc.aio.insecure_channel(f"localhost:{port}") as main:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_status(main)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.insecure_channel(f"localhost:{server.health_port}") as probe:
            assert await health_status(probe) == health_pb2.HealthCheckResponse.SERVING
            assert await health_status(probe, SERVICE) == health_pb2.HealthCheckResponse.SERVING
            # Nothing but health: the service itself and reflection are not there.
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await _call(probe, keys)
            assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
            reflection = probe.stream_stream(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                request_serializer=StringValue.SerializeToString,
                response_deserializer=StringValue.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as error:
                async for _ in reflection(iter([StringValue()]), timeout=5):
                    pass
            assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
            # Draining shows on the health port too, so the kubelet takes the pod out of rotation.
            await server.health.drain()
            assert await health_status(probe) == health_pb2.HealthCheckResponse.NOT_SERVING


def _install(pki: Pki, into: Path) -> None:
    """Put ``pki``'s files in place the way a Secret volume update does: each file replaced at once."""
    for name in ("ca.pem", "cert.pem", "key.pem"):
        staged = into / f".{name}.new"
        staged.write_bytes(
            (pki.ca if name == "ca.pem" else pki.cert if name == "cert.pem" else pki.key).read_bytes()
        )
        os.replace(staged, into / name)


async def test_renewed_certificates_are_served_without_a_restart(tmp_path: Path, keys: TestKeys) -> None:
    old, new = make_pki(tmp_path / "old", "old"), make_pki(tmp_path / "new", "new")
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    _install(old, mounted)
    live = Pki(mounted / "ca.pem", mounted / "cert.pem", mounted / "key.pem")
    app = generic_app(string_service(SERVICE, unary={"Echo": _echo}), keys=keys, service_names=(SERVICE,))

    def trusting(pki: Pki, port: int) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(pki.ca.read_bytes()))

    async with running(app, _settings(live, require_client_cert=False)) as (_, port):
        async with trusting(old, port) as channel:
            assert await _call(channel, keys) == "hello"
        # Half a rotation (a new certificate, the old key) is not adopted: the old set keeps serving.
        (mounted / "cert.pem").write_bytes(new.cert.read_bytes())
        async with trusting(old, port) as channel:
            assert await _call(channel, keys) == "hello"
        _install(new, mounted)
        # New connections get the renewed certificate: clients trusting only the new CA get through,
        # clients trusting only the old one refuse it.
        async with trusting(new, port) as channel:
            assert await _call(channel, keys) == "hello"
        async with trusting(old, port) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await _call(channel, keys)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
