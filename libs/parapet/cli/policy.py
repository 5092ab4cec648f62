"""``parapet policy show|set``: a tenant's versioned policy, edited as a JSON/YAML file or with flags.

``show --json`` prints the policy in proto3 JSON (YAML with ``--yaml``), the form ``set --file`` reads back.
The file's ``version`` (output only on the server) becomes the edit's expected version, so an edit based on
a policy someone else changed meanwhile is refused (ABORTED, POLICY_VERSION_MISMATCH) instead of undoing
their change. Flags edit the file's policy, or the current one when no file is given.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

from google.protobuf.json_format import ParseDict, ParseError

from parapet import clients
from parapet.auth.v1 import tenant_admin_service_pb2 as pb
from parapet.auth.v1 import tenant_policy_pb2
from parapet.cli import connect, failures, inputs
from parapet.cli.printing import as_dict, print_json, when

_RETENTION = {
    "full": tenant_policy_pb2.BODY_RETENTION_FULL,
    "masked": tenant_policy_pb2.BODY_RETENTION_MASKED,
    "hash-only": tenant_policy_pb2.BODY_RETENTION_HASH_ONLY,
    "none": tenant_policy_pb2.BODY_RETENTION_NONE,
}
# Not part of an edit: the server sets them on every version.
_OUTPUT_ONLY = ("version", "update_time", "update_subject")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    actions = connect.command_with_actions(
        subparsers,
        "policy",
        "show or change a tenant's policy (versioned)",
        "The tenant policy through auth's TenantAdminService; needs `admin` in the tenant. "
        "The tenant defaults to the credential's own.",
    )

    show = actions.add_parser("show", help="print the current (or an earlier) version")
    show.add_argument(
        "--version",
        type=inputs.whole_number(0, inputs.INT64_MAX),
        default=0,
        help="version to show (default: the current one)",
    )
    show.add_argument("--yaml", action="store_true", help="print YAML instead of JSON (needs PyYAML)")
    show.set_defaults(execute=_show)

    change = actions.add_parser("set", help="write a new version from a file and/or flags")
    change.add_argument("--file", type=Path, default=None, help="the whole policy, JSON or YAML (.yaml/.yml)")
    change.add_argument(
        "--expected-version",
        type=inputs.whole_number(0, inputs.INT64_MAX),
        default=None,
        help="version the edit is based on (default: the file's `version`, else the current one)",
    )
    change.add_argument(
        "--allow-model", action="append", default=None, help="allowed model or alias (repeatable; replaces)"
    )
    change.add_argument("--default-model", default=None, help="model used when a request names none")
    change.add_argument(
        "--max-tokens",
        type=inputs.whole_number(0, inputs.INT32_MAX),
        default=None,
        help="per-request output token cap; 0 = none",
    )
    change.add_argument("--body-retention", choices=sorted(_RETENTION), default=None, help="audit body form")
    change.add_argument(
        "--retention-days",
        type=inputs.whole_number(0, inputs.INT32_MAX),
        default=None,
        help="days audit bodies are kept",
    )
    change.add_argument(
        "--blocked-term", action="append", default=None, help="term moderation blocks (repeatable; replaces)"
    )
    change.set_defaults(execute=_set)

    for action in actions.choices.values():
        action.add_argument("--tenant", default=None, help="tenant (default: the credential's own)")
        connect.add_arguments(action, "auth")
        action.set_defaults(func=failures.run)


def _yaml() -> Any:
    try:
        return importlib.import_module("yaml")
    except ImportError:
        raise failures.CliError("YAML needs the PyYAML package; use JSON instead") from None


def _header(tenant: str, policy: tenant_policy_pb2.TenantPolicy) -> str:
    return (
        f"# tenant {tenant}, policy version {policy.version}, "
        f"updated {when(policy.update_time)} by {policy.update_subject or '-'}"
    )


async def _show(args: argparse.Namespace) -> int:
    async with connect.Session.from_args(args) as session:
        admin = session.client(clients.tenant_admin, "auth").stub
        tenant = await session.tenant(args.tenant)
        reply = await admin.GetTenantPolicy(
            pb.GetTenantPolicyRequest(tenant_id=tenant, version=args.version),
            metadata=await session.token_metadata(),
        )
    if args.json:
        print_json(reply.policy)
        return failures.EXIT_OK
    print(_header(tenant, reply.policy))
    if args.yaml:
        print(_yaml().safe_dump(as_dict(reply.policy), sort_keys=False), end="", flush=True)
    else:
        print_json(reply.policy)
    return failures.EXIT_OK


def read_policy(path: Path) -> tenant_policy_pb2.TenantPolicy:
    """The policy in a JSON or YAML file; unknown fields are errors (a typo must not be dropped silently)."""
    text = inputs.read_text(path, "policy file")
    if path.suffix in (".yaml", ".yml"):
        yaml = _yaml()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise failures.CliError(f"{path} is not valid YAML: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise failures.CliError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise failures.CliError(f"{path} must hold one policy object")
    try:
        return ParseDict(data, tenant_policy_pb2.TenantPolicy())
    except ParseError as exc:
        raise failures.CliError(f"{path}: {exc}") from None


def apply_flags(policy: tenant_policy_pb2.TenantPolicy, args: argparse.Namespace) -> bool:
    """Apply the editing flags to ``policy``; whether any was given."""
    changed = False
    if args.allow_model is not None:
        del policy.models.allowed_models[:]
        policy.models.allowed_models.extend(args.allow_model)
        changed = True
    if args.default_model is not None:
        policy.models.default_model = args.default_model
        changed = True
    if args.max_tokens is not None:
        policy.models.max_tokens_per_request = args.max_tokens
        changed = True
    if args.body_retention is not None:
        policy.retention.body_retention = _RETENTION[args.body_retention]
        changed = True
    if args.retention_days is not None:
        policy.retention.body_retention_days = args.retention_days
        changed = True
    if args.blocked_term is not None:
        del policy.moderation.blocked_terms[:]
        policy.moderation.blocked_terms.extend(args.blocked_term)
        changed = True
    return changed


async def _set(args: argparse.Namespace) -> int:
    from_file = read_policy(args.file) if args.file is not None else None
    async with connect.Session.from_args(args) as session:
        admin = session.client(clients.tenant_admin, "auth").stub
        metadata = await session.token_metadata()
        tenant = await session.tenant(args.tenant)
        if from_file is not None:
            policy = from_file
        else:
            current = await admin.GetTenantPolicy(
                pb.GetTenantPolicyRequest(tenant_id=tenant), metadata=metadata
            )
            policy = current.policy
        if not apply_flags(policy, args) and from_file is None:
            raise failures.CliError("nothing to change: give --file and/or an editing flag")
        expected = args.expected_version if args.expected_version is not None else policy.version
        if expected == 0:  # a file without `version`: based on whatever is current now
            current = await admin.GetTenantPolicy(
                pb.GetTenantPolicyRequest(tenant_id=tenant), metadata=metadata
            )
            expected = current.policy.version
        for name in _OUTPUT_ONLY:
            policy.ClearField(name)  # type: ignore[arg-type]
        reply = await admin.UpdateTenantPolicy(
            pb.UpdateTenantPolicyRequest(tenant_id=tenant, policy=policy, expected_version=expected),
            metadata=metadata,
        )
    if args.json:
        print_json(reply.policy)
    else:
        print(f"tenant {tenant}: policy version {reply.policy.version} (was {expected})", flush=True)
    return failures.EXIT_OK
