"""A moderation server over a real channel, reading tenant policies from the real auth service.

Once per module: the identity files ``parapet up`` provisions (auth's signing key, the JWKS every service
verifies with, moderation's masking key), the auth service on the session's PostgreSQL and NATS, and moderation
pointed at it. Per test: fresh tenants made through auth's admin API, so a policy one test sets is no other's;
callers present internal tokens signed with auth's key, as the ones auth issues.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc.aio
import pytest
import pytest_asyncio

from parapet.auth.v1 import tenant_policy_pb2
from parapet.cli.identity import provision
from parapet.kit.testing import running
from parapet.moderation.v1 import moderation_service_pb2 as pb
from parapet.moderation.v1 import moderation_service_pb2_grpc
from services.moderation.app import APP
from services.moderation.settings import ModerationSettings
from tests.integration.auth.conftest import Auth, Metadata, running_auth

MODULE = pytest.mark.asyncio(loop_scope="module")


def released(responses: Sequence[pb.ScreenStreamResponse]) -> str:
    """The text a ScreenStream released, its safe chunks joined."""
    return "".join(r.safe_chunk for r in responses if r.WhichOneof("kind") == "safe_chunk")


async def each(messages: Sequence[pb.ScreenStreamRequest]) -> AsyncIterator[pb.ScreenStreamRequest]:
    for message in messages:
        yield message


@dataclass
class Suite:
    auth: Auth
    stub: moderation_service_pb2_grpc.ModerationServiceStub
    tenants: dict[str, str] = field(default_factory=dict)  # a test's name for a tenant -> its tenant id

    def tenant_id(self, tenant: str) -> str:
        # A name the fixture did not create stands for a tenant that auth does not know.
        return self.tenants.setdefault(tenant, f"{tenant}-{uuid.uuid4().hex[:8]}")

    def metadata(self, tenant: str = "tenant-a") -> Metadata:
        return self.auth.as_(self.tenant_id(tenant), "user-1")

    async def screen_stream(
        self, chunks: Sequence[str], config: pb.ScreenStreamConfig | None = None, *, end: bool = True
    ) -> list[pb.ScreenStreamResponse]:
        """ScreenStream of ``chunks`` (after ``config``, by default the defaults; then ``end`` unless not): every
        response, in order."""
        messages = [
            pb.ScreenStreamRequest(config=config or pb.ScreenStreamConfig()),
            *(pb.ScreenStreamRequest(chunk=chunk) for chunk in chunks),
            *([pb.ScreenStreamRequest(end=True)] if end else []),
        ]
        return [r async for r in self.stub.ScreenStream(each(messages), metadata=self.metadata())]

    async def set_policy(
        self, tenant: str, edit: tenant_policy_pb2.TenantPolicy
    ) -> tenant_policy_pb2.TenantPolicy:
        return await self.auth.set_policy(self.tenant_id(tenant), edit)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def services(
    tmp_path_factory: pytest.TempPathFactory, database_url: str, nats_url: str
) -> AsyncIterator[tuple[Auth, moderation_service_pb2_grpc.ModerationServiceStub]]:
    identity = provision(tmp_path_factory.mktemp("moderation") / "identity")
    assert identity.masking_key_file is not None
    async with running_auth(
        database_url, nats_url, identity.signing_key_file, identity_jwks_file=identity.jwks_file
    ) as auth:
        settings = ModerationSettings(
            port=0,
            identity_jwks_file=identity.jwks_file,
            shutdown_grace_seconds=0.5,
            auth_address=auth.target,
            policy_cache_seconds=0.0,  # every call revalidates, so policy changes show at once
            masking_key=identity.masking_key_file.read_text().strip(),
        )
        async with (
            running(APP, settings) as (_server, port),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            yield auth, moderation_service_pb2_grpc.ModerationServiceStub(channel)


@pytest_asyncio.fixture(loop_scope="module")
async def suite(services: tuple[Auth, moderation_service_pb2_grpc.ModerationServiceStub]) -> Suite:
    auth, stub = services
    suite = Suite(auth, stub)
    for tenant in ("tenant-a", "tenant-b"):  # new tenants: version 1 of the default policy
        suite.tenants[tenant] = await auth.new_tenant("mod")
    return suite
