"""``parapet tenants list|create|disable|enable``: tenant lifecycle, for platform operators.

These RPCs need ``platform.admin``, which no tenant's own key holds, so the default credential here skips
the demo key: ``--api-key``, ``$PARAPET_API_KEY``, else the home's ``operator.key``.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from parapet import clients
from parapet.auth.v1 import tenant_admin_service_pb2 as pb
from parapet.auth.v1 import tenant_pb2
from parapet.cli import connect, failures
from parapet.cli.printing import as_dict, enum_label, print_json, print_table, when

if TYPE_CHECKING:
    from parapet.auth.v1.tenant_admin_service_pb2_grpc import TenantAdminServiceAsyncStub


class _HasTenant(Protocol):
    @property
    def tenant(self) -> tenant_pb2.Tenant: ...


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    actions = connect.command_with_actions(
        subparsers,
        "tenants",
        "list, create, disable and enable tenants (platform operators)",
        "Tenant lifecycle through auth's TenantAdminService; needs a platform operator's key.",
    )

    listing = actions.add_parser("list", help="list tenants")
    listing.add_argument("--all", action="store_true", help="include disabled tenants")
    listing.set_defaults(execute=_list)

    create = actions.add_parser("create", help="create a tenant (its policy starts at version 1)")
    create.add_argument("tenant_id", metavar="TENANT", help="lower-case letters, digits and '-', 1-63")
    create.add_argument("--name", default=None, help="display name (default: the id)")
    create.set_defaults(execute=_create)

    for name, verb, execute in (("disable", "disable", _disable), ("enable", "re-enable", _enable)):
        action = actions.add_parser(name, help=f"{verb} a tenant")
        action.add_argument("tenant_id", metavar="TENANT")
        action.add_argument("--reason", default="", help="why, for the audit trail")
        action.set_defaults(execute=execute)

    for action in actions.choices.values():
        connect.add_arguments(action, "auth")
        action.set_defaults(func=failures.run)


def _session(args: argparse.Namespace) -> connect.Session:
    return connect.Session.from_args(args, operator=True)


def _show(args: argparse.Namespace, tenants: list[tenant_pb2.Tenant]) -> None:
    if args.json:
        print_json({"tenants": [as_dict(t) for t in tenants]})
        return
    rows = [
        [t.tenant_id, t.display_name, enum_label(tenant_pb2.TenantState, t.state), when(t.create_time)]
        for t in tenants
    ]
    print_table(["TENANT", "NAME", "STATE", "CREATED"], rows, empty="(no tenants)")


async def _list(args: argparse.Namespace) -> int:

    async with _session(args) as session:
        admin = session.client(clients.tenant_admin, "auth").stub
        metadata = await session.token_metadata()

        async def page(token: str) -> tuple[list[tenant_pb2.Tenant], str]:
            reply = await admin.ListTenants(
                pb.ListTenantsRequest(page_size=1000, page_token=token, show_disabled=args.all),
                metadata=metadata,
            )
            return list(reply.tenants), reply.next_page_token

        _show(args, await connect.every_page(page))
    return failures.EXIT_OK


async def _change(
    args: argparse.Namespace,
    call: Callable[[TenantAdminServiceAsyncStub, connect.Metadata], Awaitable[_HasTenant]],
) -> int:
    """One tenant RPC whose reply carries the tenant, shown like a listing of one."""
    async with _session(args) as session:
        admin = session.client(clients.tenant_admin, "auth").stub
        reply = await call(admin, await session.token_metadata())
        _show(args, [reply.tenant])
    return failures.EXIT_OK


async def _create(args: argparse.Namespace) -> int:
    tenant = tenant_pb2.Tenant(tenant_id=args.tenant_id, display_name=args.name or args.tenant_id)
    return await _change(
        args, lambda admin, md: admin.CreateTenant(pb.CreateTenantRequest(tenant=tenant), metadata=md)
    )


async def _disable(args: argparse.Namespace) -> int:
    request = pb.DisableTenantRequest(tenant_id=args.tenant_id, reason=args.reason)
    return await _change(args, lambda admin, md: admin.DisableTenant(request, metadata=md))


async def _enable(args: argparse.Namespace) -> int:
    request = pb.EnableTenantRequest(tenant_id=args.tenant_id, reason=args.reason)
    return await _change(args, lambda admin, md: admin.EnableTenant(request, metadata=md))
