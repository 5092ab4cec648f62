"""Authorization of every retrieval RPC with tokens as auth issues them (resolved permissions, claim `perm`):
the permission each RPC needs, scopes narrowing it, the tenant only from the token, and ids and page tokens of
another tenant or caller refused without telling whether they exist."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from parapet.kit.errors import error_details
from parapet.kit.identity import Principal
from parapet.retrieval.v1 import retrieval_service_pb2 as pb
from services.auth import permissions
from tests.integration.retrieval.conftest import Client, doc, new_tenant

# Every permission a tenant policy can grant (what auth resolves for a tenant admin holding all of them).
EVERY_TENANT_PERMISSION = tuple(sorted(permissions.name(p) for p in permissions.TENANT_PERMISSIONS))


def caller(
    client: Client,
    tenant: str,
    subject: str = "alice",
    *,
    permissions: tuple[str, ...],
    groups: tuple[str, ...] = (),
) -> tuple[tuple[str, str], ...]:
    """A token as auth issues it: the roles' permissions under the policy, narrowed by the key's scopes."""
    principal = Principal(
        tenant_id=tenant,
        subject=subject,
        roles=("admin",),  # the role's name must not matter: the resolved permissions decide
        groups=groups,
        credential_type="api_key",
        api_key_id="key-1",
        permissions=permissions,
    )
    return client.keys.metadata(principal)


async def refusal(call: Any) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        result = await call
        if hasattr(result, "__aiter__"):
            async for _ in result:
                pass
    info = error_details(raised.value).error_info
    assert info is not None
    return raised.value.code(), info.reason, info.metadata.get("permission", "")


async def _stream_ingest(client: Client, metadata: Any) -> None:
    async def requests() -> AsyncIterator[pb.StreamIngestDocumentsRequest]:
        yield pb.StreamIngestDocumentsRequest(document=doc("s"), content=b"Streamed text.")

    async for _ in client.stub.StreamIngestDocuments(requests(), metadata=metadata):
        pass


async def test_a_key_scoped_to_chat_reaches_no_rpc_even_for_an_admin(client: Client) -> None:
    tenant = new_tenant()
    full = caller(client, tenant, permissions=EVERY_TENANT_PERMISSION)
    await client.ingest(full, (doc("kept"), b"The vault code is 1234."))
    chat_only = caller(client, tenant, permissions=("chat",))
    calls: list[tuple[Any, str]] = [
        (client.ingest(chat_only, (doc("x"), b"text")), "ingest"),
        (_stream_ingest(client, chat_only), "ingest"),
        (client.stub.Query(pb.QueryRequest(query="vault code"), metadata=chat_only), "documents.read"),
        (client.stub.ListDocuments(pb.ListDocumentsRequest(), metadata=chat_only), "documents.read"),
        (
            client.stub.DeleteDocument(pb.DeleteDocumentRequest(document_id="kept"), metadata=chat_only),
            "documents.delete",
        ),
        (
            client.stub.DeleteDocuments(pb.DeleteDocumentsRequest(all_documents=True), metadata=chat_only),
            "documents.delete",
        ),
        (
            client.stub.DeleteDocuments(pb.DeleteDocumentsRequest(user_id="alice"), metadata=chat_only),
            "documents.delete",
        ),
    ]
    for call, permission in calls:
        assert await refusal(call) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_MISSING", permission)
    # Nothing was written or deleted.
    listed = await client.stub.ListDocuments(pb.ListDocumentsRequest(), metadata=full)
    assert [d.document_id for d in listed.documents] == ["kept"]


async def test_each_rpc_needs_exactly_its_permission(client: Client) -> None:
    tenant = new_tenant()
    ingester = caller(client, tenant, permissions=("ingest",))
    reader = caller(client, tenant, permissions=("documents.read",))
    deleter = caller(client, tenant, permissions=("documents.delete",))
    # A custom role's permissions (no role named like them) are enough.
    await client.ingest(ingester, (doc("a"), b"Alpha document text."), (doc("b"), b"Beta document text."))
    assert await refusal(client.stub.Query(pb.QueryRequest(query="alpha"), metadata=ingester)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_MISSING",
        "documents.read",
    )
    assert [c.citation.document_id for c in await client.query(reader, "Alpha", top_k=1)] == ["a"]
    assert await refusal(
        client.stub.DeleteDocument(pb.DeleteDocumentRequest(document_id="a"), metadata=reader)
    ) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_MISSING", "documents.delete")
    assert (
        await client.stub.DeleteDocument(pb.DeleteDocumentRequest(document_id="a"), metadata=deleter)
    ).deleted
    # Erasing another user's documents, or the tenant's, needs admin besides documents.delete.
    for request in (pb.DeleteDocumentsRequest(user_id="bob"), pb.DeleteDocumentsRequest(all_documents=True)):
        assert await refusal(client.stub.DeleteDocuments(request, metadata=deleter)) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_MISSING",
            "admin",
        )
    # One's own: documents.delete alone (alice ingested "b").
    own = await client.stub.DeleteDocuments(pb.DeleteDocumentsRequest(user_id="alice"), metadata=deleter)
    assert own.deleted_count == 1


async def test_the_tenant_is_the_tokens_and_another_tenants_ids_are_not_found(client: Client) -> None:
    victim, attacker = new_tenant(), new_tenant()
    everything = EVERY_TENANT_PERMISSION
    await client.ingest(caller(client, victim, permissions=everything), (doc("secret"), b"Victim's plans."))
    # The same subject name in another tenant is another user.
    intruder = caller(client, attacker, permissions=everything)
    unknown = await refusal(
        client.stub.DeleteDocument(pb.DeleteDocumentRequest(document_id="nothing"), metadata=intruder)
    )
    other = await refusal(
        client.stub.DeleteDocument(pb.DeleteDocumentRequest(document_id="secret"), metadata=intruder)
    )
    assert other == unknown == (grpc.StatusCode.NOT_FOUND, "DOCUMENT_NOT_FOUND", "")
    allowed_missing = await client.stub.DeleteDocument(
        pb.DeleteDocumentRequest(document_id="secret", allow_missing=True), metadata=intruder
    )
    assert not allowed_missing.deleted
    assert await client.query(intruder, "plans", document_ids=["secret"]) == []
    listed = await client.stub.ListDocuments(
        pb.ListDocumentsRequest(owner_user_id="alice"), metadata=intruder
    )
    assert list(listed.documents) == []
    # Erasing "alice" and the whole tenant in the attacker's tenant leaves the victim's alice alone.
    for request in (
        pb.DeleteDocumentsRequest(user_id="alice"),
        pb.DeleteDocumentsRequest(all_documents=True),
    ):
        assert (await client.stub.DeleteDocuments(request, metadata=intruder)).deleted_count == 0
    # An ingestion of the same id makes the attacker's own document; the victim's stays as it was.
    await client.ingest(intruder, (doc("secret"), b"Attacker text."))
    kept = await client.query(
        caller(client, victim, permissions=everything), "plans", document_ids=["secret"]
    )
    assert [c.text for c in kept] == ["Victim's plans."]


async def test_a_document_outside_the_callers_groups_is_not_found_like_a_missing_one(client: Client) -> None:
    tenant = new_tenant()
    hr = caller(client, tenant, "hr-admin", permissions=EVERY_TENANT_PERMISSION, groups=("hr",))
    await client.ingest(hr, (doc("salaries", groups=("hr",)), b"Salaries of everyone."))
    finance = caller(client, tenant, "fin", permissions=EVERY_TENANT_PERMISSION, groups=("finance",))
    hidden = await refusal(
        client.stub.DeleteDocument(pb.DeleteDocumentRequest(document_id="salaries"), metadata=finance)
    )
    missing = await refusal(
        client.stub.DeleteDocument(pb.DeleteDocumentRequest(document_id="no-such"), metadata=finance)
    )
    assert hidden == missing == (grpc.StatusCode.NOT_FOUND, "DOCUMENT_NOT_FOUND", "")
    listed = await client.stub.ListDocuments(pb.ListDocumentsRequest(), metadata=finance)
    assert list(listed.documents) == []
    assert await client.query(finance, "salaries", document_ids=["salaries"]) == []
    assert len(await client.query(hr, "salaries", document_ids=["salaries"])) == 1


async def test_a_page_token_serves_only_its_tenant_and_caller(client: Client) -> None:
    tenant, other_tenant = new_tenant(), new_tenant()
    everything = EVERY_TENANT_PERMISSION
    for t in (tenant, other_tenant):
        await client.ingest(
            caller(client, t, permissions=everything),
            *((doc(f"d{i}"), f"Text {i}.".encode()) for i in range(3)),
        )
    first = await client.stub.ListDocuments(
        pb.ListDocumentsRequest(page_size=1), metadata=caller(client, tenant, permissions=everything)
    )
    assert first.next_page_token
    for metadata in (
        caller(client, other_tenant, permissions=everything),  # same subject, another tenant
        caller(client, tenant, "bob", permissions=everything),  # same tenant, another caller
    ):
        code, reason, _ = await refusal(
            client.stub.ListDocuments(
                pb.ListDocumentsRequest(page_size=1, page_token=first.next_page_token), metadata=metadata
            )
        )
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID")
