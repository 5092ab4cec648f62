"""parapet.kit.permissions: a permission is held as a scope, as a role, or through the admin role, and only so."""

from __future__ import annotations

import grpc
import pytest

from parapet.kit.errors import PermissionDenied
from parapet.kit.identity import Principal
from parapet.kit.permissions import has_permission, missing, require_permission


def _caller(roles: tuple[str, ...] = (), scopes: tuple[str, ...] = ()) -> Principal:
    return Principal(tenant_id="acme", subject="ann", roles=roles, scopes=scopes)


@pytest.mark.parametrize(
    ("caller", "held"),
    [
        (_caller(scopes=("documents.read",)), True),
        (_caller(roles=("documents.read",)), True),
        (_caller(roles=("admin",)), True),
        (_caller(roles=("member",), scopes=("ingest",)), False),
        (_caller(scopes=("admin",)), False),  # admin is a role; an API key scoped "admin" holds only "admin"
        (_caller(), False),
    ],
)
def test_a_permission_is_held_as_a_scope_a_role_or_through_the_admin_role(
    caller: Principal, held: bool
) -> None:
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
