"""A running auth service (real PostgreSQL, NATS, channel) and helpers to call it as anyone."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc.aio
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from parapet.auth.v1 import (
    auth_service_pb2_grpc,
    tenant_admin_service_pb2,
    tenant_admin_service_pb2_grpc,
    tenant_pb2,
    user_pb2,
)
from parapet.cli.identity import thumbprint_kid
from parapet.kit.identity import Principal, TokenSigner
from parapet.kit.testing import running
from services.auth.app import APP
from services.auth.settings import AuthSettings

PLATFORM = "parapet"


@pytest.fixture(scope="module")
def signing_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = Ed25519PrivateKey.generate()
    path = tmp_path_factory.mktemp("identity") / "signing_key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def auth_settings(database_url: str, nats_url: str, signing_key_file: Path, **overrides: Any) -> AuthSettings:
    values: dict[str, Any] = {
        "port": 0,
        "database_url": database_url,
        "nats_url": nats_url,
        "auth_signing_key_file": signing_key_file,
        "health_interval_seconds": 0.5,
        "shutdown_grace_seconds": 1.0,
        "auth_outbox_interval_seconds": 0.2,
        "auth_oidc_min_refetch_seconds": 0.0,
    }
    values.update(overrides)
    return AuthSettings(**values)


@dataclass
class Auth:
    """A channel to a running auth service and a signer of internal tokens with its key."""

    channel: grpc.aio.Channel
    signer: TokenSigner

    @property
    def auth(self) -> auth_service_pb2_grpc.AuthServiceStub:
        return auth_service_pb2_grpc.AuthServiceStub(self.channel)

    @property
    def admin(self) -> tenant_admin_service_pb2_grpc.TenantAdminServiceStub:
        return tenant_admin_service_pb2_grpc.TenantAdminServiceStub(self.channel)

    def as_(self, tenant_id: str, subject: str = "someone", roles: tuple[str, ...] = (), **kw: Any) -> Any:
        token = self.signer.sign(Principal(tenant_id=tenant_id, subject=subject, roles=roles, **kw))
        return (("authorization", f"Bearer {token}"),)

    @property
    def operator(self) -> Any:
        return self.as_(PLATFORM, "operator", ("platform-admin",))

    async def new_tenant(self, prefix: str = "t") -> str:
        tenant_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
        await self.admin.CreateTenant(
            tenant_admin_service_pb2.CreateTenantRequest(
                tenant=tenant_pb2.Tenant(tenant_id=tenant_id, display_name=tenant_id)
            ),
            metadata=self.operator,
        )
        return tenant_id

    async def new_user(
        self, tenant_id: str, user_id: str, roles: tuple[str, ...] = (), groups: tuple[str, ...] = ()
    ) -> None:
        await self.admin.CreateUser(
            tenant_admin_service_pb2.CreateUserRequest(
                tenant_id=tenant_id,
                user=user_pb2.User(
                    user_id=user_id, roles=roles, groups=groups, kind=user_pb2.USER_KIND_SERVICE_ACCOUNT
                ),
            ),
            metadata=self.operator,
        )

    async def new_key(self, tenant_id: str, user_id: str, scopes: tuple[str, ...] = ()) -> tuple[str, str]:
        """(api_key_id, full key)."""
        from parapet.auth.v1 import api_key_pb2

        created = await self.admin.CreateApiKey(
            tenant_admin_service_pb2.CreateApiKeyRequest(
                tenant_id=tenant_id, api_key=api_key_pb2.ApiKey(user_id=user_id, scopes=scopes)
            ),
            metadata=self.operator,
        )
        return created.api_key.api_key_id, created.secret


def signer_for(signing_key_file: Path) -> TokenSigner:
    key = serialization.load_pem_private_key(signing_key_file.read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    return TokenSigner(key, thumbprint_kid(key.public_key()))


@pytest.fixture
async def auth(database_url: str, nats_url: str, signing_key_file: Path) -> AsyncIterator[Auth]:
    settings = auth_settings(database_url, nats_url, signing_key_file)
    async with (
        running(APP, settings) as (_server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield Auth(channel, signer_for(signing_key_file))
