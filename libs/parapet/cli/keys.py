"""``parapet keys create|list|revoke``: a tenant's API keys (the secret is printed once, at creation)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import grpc

from parapet import clients
from parapet.auth.v1 import api_key_pb2, user_pb2
from parapet.auth.v1 import tenant_admin_service_pb2 as pb
from parapet.cli import connect, failures
from parapet.cli.printing import as_dict, enum_label, print_json, print_table, timestamp, when

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp

    from parapet.auth.v1.tenant_admin_service_pb2_grpc import TenantAdminServiceAsyncStub


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    actions = connect.command_with_actions(
        subparsers,
        "keys",
        "create, list and revoke API keys of a tenant",
        "API keys through auth's TenantAdminService; needs `admin` in the tenant (or a platform "
        "operator). The tenant defaults to the credential's own.",
    )

    create = actions.add_parser("create", help="create a key; its secret is printed once, on stdout")
    create.add_argument("--user", required=True, help="user or service account the key acts as")
    create.add_argument("--name", default="", help="display name, e.g. 'billing-backend prod'")
    create.add_argument(
        "--scope", action="append", default=[], help="permission the key is narrowed to (repeatable)"
    )
    create.add_argument("--expires-in-days", type=int, default=None, help="days until the key stops working")
    create.add_argument(
        "--role",
        action="append",
        default=[],
        help="create --user as a service account with this role first, if it does not exist (repeatable)",
    )
    create.set_defaults(execute=_create)

    listing = actions.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--user", default="", help="only this user's keys")
    listing.add_argument("--all", action="store_true", help="include revoked and expired keys")
    listing.set_defaults(execute=_list)

    revoke = actions.add_parser("revoke", help="revoke a key (cannot be undone)")
    revoke.add_argument("api_key_id", metavar="KEY_ID")
    revoke.add_argument("--reason", default="", help="why, for the audit trail")
    revoke.set_defaults(execute=_revoke)

    for action in actions.choices.values():
        action.add_argument("--tenant", default=None, help="tenant (default: the credential's own)")
        connect.add_arguments(action, "auth")
        action.set_defaults(func=failures.run)


def _show(args: argparse.Namespace, keys: list[api_key_pb2.ApiKey]) -> None:
    if args.json:
        print_json({"api_keys": [as_dict(k) for k in keys]})
        return
    rows = [
        [
            k.api_key_id,
            k.prefix,
            k.user_id,
            enum_label(api_key_pb2.ApiKeyState, k.state),
            ",".join(k.scopes) or "-",
            k.display_name or "-",
            when(k.create_time),
            when(k.expire_time),
            when(k.last_use_time),
        ]
        for k in keys
    ]
    header = ["KEY_ID", "PREFIX", "USER", "STATE", "SCOPES", "NAME", "CREATED", "EXPIRES", "LAST_USED"]
    print_table(header, rows, empty="(no keys)")


async def ensure_user(
    admin: TenantAdminServiceAsyncStub, metadata: connect.Metadata, tenant: str, user: str, roles: list[str]
) -> None:
    """Create ``user`` as a service account with ``roles`` unless it exists (then it is left as it is)."""
    request = pb.CreateUserRequest(
        tenant_id=tenant,
        user=user_pb2.User(user_id=user, roles=roles, kind=user_pb2.USER_KIND_SERVICE_ACCOUNT),
    )
    try:
        await admin.CreateUser(request, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        # An existing user keeps its own roles: --role only seeds a new service account.
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise


def expiry(days: int | None, now: datetime) -> Timestamp | None:
    """When a key made ``now`` with ``--expires-in-days`` stops working; refused before any call."""
    if days is None:
        return None
    if days <= 0:
        raise failures.CliError("--expires-in-days must be a positive number of days")
    try:
        return timestamp(now + timedelta(days=days))
    except OverflowError:  # past datetime's (and the API's) last year
        raise failures.CliError(
            f"--expires-in-days {days} is too far ahead: it ends after the year 9999"
        ) from None


async def _create(args: argparse.Namespace) -> int:
    expire_time = expiry(args.expires_in_days, datetime.now(UTC))
    async with connect.Session.from_args(args) as session:
        admin = session.client(clients.tenant_admin, "auth").stub
        metadata = await session.token_metadata()
        tenant = await session.tenant(args.tenant)
        if args.role:
            await ensure_user(admin, metadata, tenant, args.user, args.role)
        key = api_key_pb2.ApiKey(user_id=args.user, display_name=args.name, scopes=args.scope)
        if expire_time is not None:
            key.expire_time.CopyFrom(expire_time)
        reply = await admin.CreateApiKey(
            pb.CreateApiKeyRequest(tenant_id=tenant, api_key=key), metadata=metadata
        )
    if args.json:
        print_json({"api_key": as_dict(reply.api_key), "secret": reply.secret})
        return failures.EXIT_OK
    failures.say(
        f"created key {reply.api_key.api_key_id} ({reply.api_key.prefix}) for {args.user} in tenant {tenant}; "
        "the secret below is shown only this once, store it now:"
    )
    print(reply.secret, flush=True)
    return failures.EXIT_OK


async def _list(args: argparse.Namespace) -> int:
    async with connect.Session.from_args(args) as session:
        admin = session.client(clients.tenant_admin, "auth").stub
        metadata = await session.token_metadata()
        tenant = await session.tenant(args.tenant)

        async def page(token: str) -> tuple[list[api_key_pb2.ApiKey], str]:
            request = pb.ListApiKeysRequest(
                tenant_id=tenant, page_size=1000, page_token=token, user_id=args.user, show_inactive=args.all
            )
            reply = await admin.ListApiKeys(request, metadata=metadata)
            return list(reply.api_keys), reply.next_page_token

        _show(args, await connect.every_page(page))
    return failures.EXIT_OK


async def _revoke(args: argparse.Namespace) -> int:
    async with connect.Session.from_args(args) as session:
        admin = session.client(clients.tenant_admin, "auth").stub
        tenant = await session.tenant(args.tenant)
        request = pb.RevokeApiKeyRequest(tenant_id=tenant, api_key_id=args.api_key_id, reason=args.reason)
        reply = await admin.RevokeApiKey(request, metadata=await session.token_metadata())
        _show(args, [reply.api_key])
    return failures.EXIT_OK
