"""Entry point of the ``parapet`` command; each subcommand lives in a module with ``register``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from parapet.cli import (
    audit,
    bootstrap,
    chat,
    erase,
    ingest,
    jobs,
    keys,
    policy,
    serve,
    status,
    tenants,
    up,
    usage,
)
from parapet.cli.failures import stdout_closed

# The suite's own commands, then the people-facing ones (docs/cli.md), one module each.
COMMANDS = (up, serve, status, bootstrap, chat, jobs, ingest, tenants, keys, policy, usage, audit, erase)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parapet", description="Parapet: the governed AI gateway.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except BrokenPipeError:
        # Commands outside failures.run (status, a chat conversation, up) piped into `head` end the same way.
        return stdout_closed()
    return code
