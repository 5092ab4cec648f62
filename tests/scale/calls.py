"""Calls the scale tests make against a running suite: a tenant with an API key, a token, a document, and a
tenant's rows read straight from the database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

from sqlalchemy import text

from parapet import clients
from parapet.auth.v1 import (
    api_key_pb2,
    auth_service_pb2,
    tenant_admin_service_pb2,
    tenant_pb2,
    user_pb2,
)
from parapet.cli.layout import BOOTSTRAP_KEY_NAME
from parapet.kit.database import Database
from parapet.retrieval.v1 import document_pb2, retrieval_service_pb2
from tests.scale.replicas import ReplicaSuite

Metadata = tuple[tuple[str, str], ...]


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


async def operator_key(suite: ReplicaSuite) -> str:
    path = suite.identity.signing_key_file.parent / BOOTSTRAP_KEY_NAME
    return (await asyncio.to_thread(path.read_text)).strip()


async def tenant_with_key(suite: ReplicaSuite) -> tuple[str, str]:
    """A new tenant and an API key of its user ``loader`` (role admin), made through the admin RPCs."""
    tenant = f"scale-{uuid.uuid4().hex[:10]}"
    async with (
        clients.auth(suite.target("auth")) as auth,
        clients.tenant_admin(suite.target("auth")) as admin,
    ):
        operator = await auth.stub.Authenticate(
            auth_service_pb2.AuthenticateRequest(api_key=await operator_key(suite)), timeout=10
        )
        md = bearer(operator.token)
        await admin.stub.CreateTenant(
            tenant_admin_service_pb2.CreateTenantRequest(
                tenant=tenant_pb2.Tenant(tenant_id=tenant, display_name="Scale test")
            ),
            metadata=md,
            timeout=10,
        )
        await admin.stub.CreateUser(
            tenant_admin_service_pb2.CreateUserRequest(
                tenant_id=tenant,
                user=user_pb2.User(
                    user_id="loader", roles=["admin"], kind=user_pb2.USER_KIND_SERVICE_ACCOUNT
                ),
            ),
            metadata=md,
            timeout=10,
        )
        created = await admin.stub.CreateApiKey(
            tenant_admin_service_pb2.CreateApiKeyRequest(
                tenant_id=tenant, api_key=api_key_pb2.ApiKey(user_id="loader")
            ),
            metadata=md,
            timeout=10,
        )
    return tenant, created.secret


async def token_for(suite: ReplicaSuite, api_key: str) -> str:
    async with clients.auth(suite.target("auth")) as auth:
        reply = await auth.stub.Authenticate(
            auth_service_pb2.AuthenticateRequest(api_key=api_key), timeout=10
        )
    return str(reply.token)


async def ingest(suite: ReplicaSuite, md: Metadata) -> None:
    async def requests() -> AsyncIterator[retrieval_service_pb2.IngestDocumentsRequest]:
        yield retrieval_service_pb2.IngestDocumentsRequest(
            document=document_pb2.Document(document_id="refunds", title="Refunds", mime_type="text/plain"),
            content=b"Annual plans can be refunded within 30 days of purchase. Monthly plans are not refunded.",
        )

    async with clients.retrieval(suite.target("retrieval")) as retrieval:
        reply = await retrieval.stub.IngestDocuments(requests(), metadata=md, timeout=60)
    assert [r.chunk_count > 0 for r in reply.results] == [True]


async def tenant_rows(database_url: str, schema: str, sql: str, tenant: str) -> list[tuple[str, ...]]:
    """``sql`` (one tenant's rows, ``:t``) straight from the database, as strings."""
    database = Database(database_url, schema)
    try:
        async with database.session() as session:
            rows = (await session.execute(text(sql), {"t": tenant})).all()
    finally:
        await database.close()
    return [tuple(str(value) for value in row) for row in rows]
