"""A moderation server over a real channel, and a stand-in auth server answering GetEffectivePolicy.

The stand-in is a real gRPC server on the kit (identity verified, tenant from the token) serving the
published AuthService contract from an in-memory table, so these tests exercise moderation's policy
client over the wire without the auth service's database.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
import pytest

from parapet.auth.v1 import auth_service_pb2, auth_service_pb2_grpc, tenant_policy_pb2
from parapet.kit.app import Resources, ServiceApp
from parapet.kit.config import ServiceSettings
from parapet.kit.context import require_principal
from parapet.kit.errors import NotFound, Unimplemented
from parapet.kit.identity import Principal
from parapet.kit.testing import TestKeys, make_test_keys, running
from parapet.moderation.v1 import moderation_service_pb2_grpc
from services.moderation.app import APP
from services.moderation.settings import ModerationSettings


class PolicyTable(auth_service_pb2_grpc.AuthServiceServicer):
    def __init__(self) -> None:
        self.policies: dict[str, tenant_policy_pb2.TenantPolicy] = {}
        self.known_versions: list[int] = []

    async def GetEffectivePolicy(
        self, request: auth_service_pb2.GetEffectivePolicyRequest, context: grpc.aio.ServicerContext
    ) -> auth_service_pb2.GetEffectivePolicyResponse:
        self.known_versions.append(request.known_version)
        policy = self.policies.get(require_principal().tenant_id)
        if policy is None:
            raise NotFound("no such tenant")
        if request.known_version == policy.version:
            return auth_service_pb2.GetEffectivePolicyResponse(not_modified=True)
        return auth_service_pb2.GetEffectivePolicyResponse(policy=policy)

    # Moderation calls nothing else; the rest of the contract is not part of the stand-in.
    async def Authenticate(self, request: object, context: object) -> auth_service_pb2.AuthenticateResponse:
        raise Unimplemented("not part of the stand-in")

    async def Authorize(self, request: object, context: object) -> auth_service_pb2.AuthorizeResponse:
        raise Unimplemented("not part of the stand-in")

    async def GetJwks(self, request: object, context: object) -> auth_service_pb2.GetJwksResponse:
        raise Unimplemented("not part of the stand-in")

    async def IssueDelegatedToken(
        self, request: object, context: object
    ) -> auth_service_pb2.IssueDelegatedTokenResponse:
        raise Unimplemented("not part of the stand-in")


@dataclass
class Suite:
    keys: TestKeys
    stub: moderation_service_pb2_grpc.ModerationServiceStub
    policies: PolicyTable
    tenants: dict[str, Principal] = field(default_factory=dict)

    def metadata(self, tenant: str = "tenant-a") -> tuple[tuple[str, str], ...]:
        principal = self.tenants.setdefault(tenant, Principal(tenant_id=tenant, subject="user-1"))
        return self.keys.metadata(principal)


def _auth_app(table: PolicyTable, keys: TestKeys) -> ServiceApp[ServiceSettings]:
    async def register(server: grpc.aio.Server, resources: Resources[ServiceSettings]) -> None:
        auth_service_pb2_grpc.add_AuthServiceServicer_to_server(table, server)

    return ServiceApp(
        name="auth_standin",
        settings_type=ServiceSettings,
        register=register,
        service_names=("parapet.auth.v1.AuthService",),
        key_source=lambda _settings: keys.key_source(),
    )


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[Suite]:
    keys = make_test_keys()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(keys.jwks()))
    table = PolicyTable()
    auth_settings = ServiceSettings(port=0, identity_jwks_file=jwks, shutdown_grace_seconds=0.5)
    async with running(_auth_app(table, keys), auth_settings) as (_auth, auth_port):
        settings = ModerationSettings(
            port=0,
            identity_jwks_file=jwks,
            shutdown_grace_seconds=0.5,
            auth_address=f"127.0.0.1:{auth_port}",
            policy_cache_seconds=0.0,  # every call revalidates, so policy changes show at once
            masking_key=base64.b64encode(os.urandom(32)).decode(),
        )
        async with (
            running(APP, settings) as (_server, port),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            suite = Suite(keys, moderation_service_pb2_grpc.ModerationServiceStub(channel), table)
            for tenant in ("tenant-a", "tenant-b"):
                table.policies[tenant] = tenant_policy_pb2.TenantPolicy(version=1)
            yield suite
