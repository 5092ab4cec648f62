"""parapet.kit.permissions: the permissions auth resolved into the token decide; a token without them falls back
to role and scope names, never beyond its scopes."""

from __future__ import annotations

import grpc
import pytest

from parapet.kit.errors import InvalidArgument, PermissionDenied
from parapet.kit.identity import Principal
from parapet.kit.permissions import erasure_target, has_permission, missing, require_permission
from parapet.retrieval.v1 import retrieval_service_pb2


def _caller(
    roles: tuple[str, ...] = (), scopes: tuple[str, ...] = (), permissions: tuple[str, ...] | None = None
) -> Principal:
    return Principal(tenant_id="acme", subject="ann", roles=roles, scopes=scopes, permissions=permissions)


@pytest.mark.parametrize(
    ("caller", "held"),
    [
        # Resolved by auth: the list is the answer, whatever the role names say.
        (_caller(roles=("member",), permissions=("chat", "documents.read")), True),
        (_caller(roles=("admin",), permissions=("chat",)), False),  # an admin's key scoped to chat
        (_caller(roles=("documents.read",), permissions=()), False),
        # Not resolved (an older auth's token, or one a test signed): names.
        (_caller(roles=("documents.read",)), True),
        (_caller(roles=("admin",)), True),
        (_caller(scopes=("documents.read",)), True),
        (_caller(roles=("admin",), scopes=("chat",)), False),  # never beyond the scopes
        (_caller(roles=("member",)), False),
        (_caller(scopes=("admin",)), False),  # admin is a role; a key scoped "admin" holds only "admin"
        (_caller(), False),
    ],
)
def test_who_holds_documents_read(caller: Principal, held: bool) -> None:
    assert has_permission(caller, "documents.read") is held


def test_a_missing_permission_is_permission_denied_naming_it_and_what_needed_it() -> None:
    with pytest.raises(PermissionDenied) as denied:
        require_permission(_caller(roles=("member",)), "admin", "deleting another user's cached answers")
    error = denied.value
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert str(error) == "deleting another user's cached answers needs the 'admin' permission"
    assert (error.reason, dict(error.metadata)) == ("PERMISSION_MISSING", {"permission": "admin"})
    assert str(missing("audit.read")) == "this call needs the 'audit.read' permission"
    require_permission(_caller(roles=("admin",)), "admin")  # held: no error


@pytest.mark.parametrize(
    ("fields", "caller", "expected"),
    [
        ({"user_id": "ann"}, _caller(roles=("member",)), "ann"),  # one's own: no permission needed
        ({"user_id": "bob"}, _caller(roles=("admin",)), "bob"),
        ({"all_documents": True}, _caller(roles=("admin",)), None),  # the whole tenant's
        ({"user_id": "bob"}, _caller(roles=("member",)), PermissionDenied),
        ({"all_documents": True}, _caller(roles=("member",)), PermissionDenied),
        ({}, _caller(roles=("admin",)), InvalidArgument),
        ({"user_id": ""}, _caller(roles=("admin",)), InvalidArgument),
        ({"all_documents": False}, _caller(roles=("admin",)), InvalidArgument),
    ],
)
def test_erasure_target_names_one_user_or_the_tenant_and_needs_admin_beyond_one_s_own(
    fields: dict[str, object], caller: Principal, expected: object
) -> None:
    request = retrieval_service_pb2.DeleteDocumentsRequest(**fields)  # type: ignore[arg-type]
    if isinstance(expected, type):
        with pytest.raises(expected):
            erasure_target(caller, request, everything="all_documents", what="documents")
    else:
        assert erasure_target(caller, request, everything="all_documents", what="documents") == expected
