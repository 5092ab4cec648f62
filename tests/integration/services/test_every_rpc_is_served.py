"""Every RPC of the published contracts is served by some service, over a real channel.

Guards against contract drift: an RPC added to a proto but to no servicer would reach callers as grpc's
anonymous "Method not found" (or, through a generated base class, as INTERNAL). Each RPC must instead be
answered by its service: implemented, or pending with a typed UNIMPLEMENTED naming the issue that brings it.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor

from parapet.cli.registry import service_names
from parapet.embedded import EmbeddedNats, free_port
from parapet.kit.app import ServiceApp
from parapet.kit.descriptors import published_services
from parapet.kit.errors import error_details
from parapet.kit.identity import Principal
from parapet.kit.testing import TestKeys, make_test_keys, running
from tests.hostile import crash, hostile_requests


def _apps() -> dict[str, ServiceApp[Any]]:
    return {name: importlib.import_module(f"services.{name}.app").APP for name in service_names()}


def test_every_published_service_belongs_to_exactly_one_app() -> None:
    owners: dict[str, list[str]] = {}
    for name, app in _apps().items():
        for service in app.service_names:
            owners.setdefault(service, []).append(name)
    published = {service.full_name for service in published_services()}
    assert published, "no generated services found"
    assert {s: o for s, o in owners.items() if len(o) != 1} == {}
    assert published - owners.keys() == set(), "services in protos/ that no app serves"
    assert owners.keys() - published == set(), "apps naming services that protos/ do not declare"


def _message(descriptor: Any) -> Any:
    return message_factory.GetMessageClass(descriptor)


async def _one(message: Any) -> AsyncIterator[Any]:
    yield message


async def _call(
    channel: grpc.aio.Channel, method: MethodDescriptor, metadata: Any, *, request: Any = None
) -> None:
    """Call ``method`` once with ``request`` (default: an empty one), whatever its streaming shape; raise
    what it answers."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    request_type, response_type = _message(method.input_type), _message(method.output_type)
    codec = {
        "request_serializer": request_type.SerializeToString,
        "response_deserializer": response_type.FromString,
    }
    request = request_type() if request is None else request
    if method.client_streaming and method.server_streaming:
        async for _ in channel.stream_stream(path, **codec)(_one(request), metadata=metadata, timeout=5):
            pass
    elif method.client_streaming:
        await channel.stream_unary(path, **codec)(_one(request), metadata=metadata, timeout=5)
    elif method.server_streaming:
        async for _ in channel.unary_stream(path, **codec)(request, metadata=metadata, timeout=5):
            pass
    else:
        await channel.unary_unary(path, **codec)(request, metadata=metadata, timeout=5)


HOSTILE_CALLERS = (
    Principal(tenant_id="tenant-a", subject="user-1", roles=("member",)),
    Principal(tenant_id="tenant-a", subject="admin-1", roles=("admin",), credential_type="api_key"),
    Principal(tenant_id="tenant-a", subject="svc-gateway", roles=("admin",), credential_type="service"),
)


async def _hostile_crashes(
    channel: grpc.aio.Channel, method: MethodDescriptor, path: str, keys: TestKeys
) -> list[str]:
    """Hostile input is refused (or served) with a typed status too, never a crash: from a member, and from
    a tenant admin and a service, whom fewer checks stop before the servicer's own. What crashed."""
    crashed: list[str] = []
    for caller in HOSTILE_CALLERS:
        for what, hostile in hostile_requests(_message(method.input_type)):
            try:
                await _call(channel, method, keys.metadata(caller), request=hostile)
            except grpc.aio.AioRpcError as error:
                if (why := crash(error_details(error))) is not None:
                    crashed.append(f"{path} as {caller.roles}, {what}: {why}")
    return crashed


@pytest.fixture(scope="module")
def keys() -> TestKeys:
    return make_test_keys()


@pytest.mark.parametrize("name", service_names())
async def test_every_rpc_answers_from_its_servicer(
    name: str, keys: TestKeys, tmp_path: Path, database_url: str, fresh_nats: EmbeddedNats
) -> None:
    app = _apps()[name]
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(keys.jwks()))
    settings = app.settings_type(
        port=0,
        database_url=database_url,
        # A NATS of its own: services with durable consumers (audit, billing) would otherwise first work
        # through every record other tests left on the session's streams.
        nats_url=fresh_nats.url,
        identity_jwks_file=jwks_file,
        # Where policies would come from; no auth runs here, so RPCs that need one answer UNAVAILABLE.
        auth_address=f"127.0.0.1:{free_port()}",
        shutdown_grace_seconds=1.0,
        # The gateway serves JobService either way; its workers would need auth's service-account key.
        **({"gateway_job_workers_enabled": False} if name == "gateway" else {}),
    )
    crashed: list[str] = []
    async with (
        running(app, settings) as (_server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        for service_name in app.service_names:
            service = next(s for s in published_services() if s.full_name == service_name)
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                try:
                    await _call(channel, method, keys.metadata())
                except grpc.aio.AioRpcError as error:
                    if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                        # Pending RPCs say so with a typed reason and the issue that implements them.
                        details = error_details(error)
                        assert details.error_info is not None, path
                        assert details.error_info.reason == "NOT_IMPLEMENTED", path
                        assert details.error_info.domain == "parapet.dev"
                        assert details.error_info.metadata["method"] == path
                        assert "issue #" in (error.details() or "")
                    else:
                        # Implemented RPCs answer an empty request with a typed status of their own, never
                        # a crash or the transport's anonymous failure.
                        assert crash(error_details(error)) is None, (path, error.details())
                crashed += await _hostile_crashes(channel, method, path, keys)

                if path not in app.public_methods:
                    # Without an internal token the kit refuses before the servicer runs.
                    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                        await _call(channel, method, ())
                    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED, path
    assert crashed == []
