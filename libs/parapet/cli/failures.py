"""How the people-facing commands fail: one clear line on stderr and a documented exit code (docs/cli.md).

Every command has an async core ``execute(args) -> int``; :func:`run_async` turns what it raises into a
message and an exit code, and :func:`run` is the synchronous entry ``main`` calls (Ctrl-C gives 130).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
import grpc.aio

EXIT_OK = 0
EXIT_FAILED = 1  # Parapet answered with an error status
EXIT_USAGE = 2  # bad arguments, no credential, unreadable input (argparse uses 2 as well)
EXIT_UNREACHABLE = 3  # the service did not answer (UNAVAILABLE, DEADLINE_EXCEEDED)
EXIT_PROBLEM_FOUND = 4  # the command ran and found a problem: documents rejected, audit chain broken
EXIT_ALREADY_DONE = 5  # nothing to do and nothing done: `parapet bootstrap` of an account that has a key
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
EXIT_PIPE_CLOSED = 141  # stdout closed early (`| head`), as shells report SIGPIPE

_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}

Execute = Callable[[argparse.Namespace], Awaitable[int]]


class CliError(Exception):
    """A failure found by the command itself (not by a service), with its exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def describe_status(code: int | str, message: str, details: Iterable[Any] = ()) -> str:
    """One line from a status: code, message, ErrorInfo reason, field and quota violations, retry delay.

    ``details`` are the packed ``Any`` messages of a ``google.rpc.Status`` (or of Parapet's copy of it that
    per-item results such as ingestion's carry).
    """
    from google.rpc import error_details_pb2

    name = code if isinstance(code, str) else code_name(code)
    line = f"{name}: {message or 'no message'}"
    for packed in details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            line += f" (reason {info.reason})"
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            line += "; " + "; ".join(f"{v.field}: {v.description}" for v in bad.field_violations)
        elif packed.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            packed.Unpack(quota)
            line += "; " + "; ".join(f"{v.subject}: {v.description}" for v in quota.violations)
        elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            packed.Unpack(retry)
            line += f"; retry after {retry.retry_delay.ToTimedelta().total_seconds():g} s"
    return line


def describe(error: grpc.aio.AioRpcError) -> str:
    """One line for a failed call, from its status and the details in its trailers."""
    from parapet.kit.errors import status_of_call

    status = status_of_call(error)
    if status is None:
        return describe_status(error.code().name, error.details() or "")
    return describe_status(status.code, status.message, status.details)


def exit_code_of(error: grpc.aio.AioRpcError) -> int:
    return EXIT_UNREACHABLE if error.code() in _UNREACHABLE else EXIT_FAILED


def say(message: str) -> None:
    """A line for the person at the terminal, on stderr (stdout carries the command's output)."""
    print(message, file=sys.stderr, flush=True)


async def run_async(args: argparse.Namespace) -> int:
    """Run the command's ``execute`` and turn its failures into a message and an exit code."""
    execute: Execute = args.execute
    try:
        return await execute(args)
    except CliError as exc:
        say(f"parapet {args.command}: {exc}")
        return exc.code
    except grpc.aio.AioRpcError as exc:
        say(f"parapet {args.command}: {describe(exc)}")
        return exit_code_of(exc)


def run(args: argparse.Namespace) -> int:
    """Synchronous entry of a command: one event loop for the whole command, Ctrl-C gives exit 130."""
    try:
        return asyncio.run(run_async(args))
    except KeyboardInterrupt:
        say(f"parapet {args.command}: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return stdout_closed()


def stdout_closed() -> int:
    """The reader stopped reading (``| head``): not worth a traceback, exit as shells report SIGPIPE.

    Points stdout at /dev/null so the interpreter's final flush at exit does not fail again.
    """
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_PIPE_CLOSED


def code_name(code: int) -> str:
    """The name of a gRPC status code number (as records and per-item results keep them)."""
    return _CODE_NAMES.get(code) or str(code)
