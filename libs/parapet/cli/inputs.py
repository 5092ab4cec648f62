"""What a person hands the people-facing commands: files to read and numbers to send.

One helper for each, so every command refuses a mistake the same way: a one-line ``CliError`` (exit 2)
before any call, never a traceback (docs/cli.md, "Errors and exit codes").
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from parapet.cli.failures import CliError

# The largest values of the proto integer fields the commands fill in (larger ones fail to serialize).
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def read_text(path: Path, what: str, *, missing_ok: bool = False) -> str:
    """The UTF-8 text of the file ``what`` (e.g. "policy file") at ``path``.

    Raises CliError naming the file and why: missing, a directory, not readable, or not text (a binary file
    is a wrong file, not a file to guess an encoding for). ``missing_ok``: a missing file reads as "" (the
    optional key files of the home).
    """
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return ""
        raise CliError(f"cannot read the {what} {path}: no such file") from None
    except UnicodeDecodeError:
        raise CliError(f"the {what} {path} is not UTF-8 text (a binary file?)") from None
    except OSError as exc:
        raise CliError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type`` for a whole number in [low, high]: a number the request's field cannot hold is
    a usage mistake at parsing (exit 2), not a serialization traceback once the command runs."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}, not {text!r}")
        return value

    return parse


def positive_seconds(text: str) -> float:
    """An argparse ``type`` for a delay or timeout in seconds: a finite number above 0.

    ``float`` alone takes ``nan`` and ``inf``: a ``nan`` poll interval passed every ``> 0`` check and made
    ``audit tail -f`` poll without pause, and a ``nan`` timeout never expires.
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text!r}")
    return value
