"""Entry point of the ``parapet`` command; each subcommand lives in a module with ``register``."""

from __future__ import annotations

import argparse
import sys
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
from parapet.cli.failures import EXIT_USAGE, stdout_closed
from parapet.cli.printing import tolerate_unencodable_output

# The suite's own commands, then the people-facing ones (docs/cli.md), one module each.
COMMANDS = (up, serve, status, bootstrap, chat, jobs, ingest, tenants, keys, policy, usage, audit, erase)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parapet", description="Parapet: the governed AI gateway.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def not_utf8(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The first argument of the command whose text is not UTF-8 (``--flag`` or ``METAVAR``); None if none.

    Bytes that are not UTF-8 (a Latin-1 terminal, a script in another encoding) reach Python as lone
    surrogates, which no request can carry: a traceback, or a CancelledError from a stream, once the command
    ran. Paths are left to their command (``ingest`` reports a file name that is not UTF-8 as that file's
    problem), and so is everything that is not text.
    """
    for action in _command_parser(parser, args)._actions:
        value = getattr(args, action.dest, None)
        items = value if isinstance(value, list | tuple) else [value]
        texts = [text for item in items for text in (item if isinstance(item, tuple) else (item,))]
        for text in texts:
            if isinstance(text, str) and not _encodes(text):
                return (
                    max(action.option_strings, key=len)
                    if action.option_strings
                    else str(action.metavar or action.dest)
                )
    return None


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the command (and action) ``args`` were parsed by: ``parapet keys create``'s own."""
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        chosen = getattr(args, sub.dest, None) if sub is not None else None
        if sub is None or chosen is None:
            return parser
        parser = sub.choices[chosen]


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tolerate_unencodable_output()
    bad = not_utf8(parser, args)
    if bad is not None:
        print(
            f"parapet {args.command}: {bad} is not UTF-8 text (a terminal in another encoding?)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        code: int = args.func(args)
    except BrokenPipeError:
        # Commands outside failures.run (status, a chat conversation, up) piped into `head` end the same way.
        return stdout_closed()
    return code
