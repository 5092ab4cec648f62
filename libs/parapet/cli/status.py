"""``parapet status``: the health of every service of a suite started with ``parapet up``."""

from __future__ import annotations

import argparse
import os

from parapet.cli import registry
from parapet.cli.failures import EXIT_USAGE, say
from parapet.cli.health import SERVING, HealthProber, TlsSetupError
from parapet.cli.layout import PortLayout
from parapet.cli.output import render_table
from parapet.cli.up import BASE_PORT_ENV, resolve_base_port


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show the grpc.health.v1 status of every service of the suite",
        description="Ask every service of the suite (ports from the base port) for its health.",
    )
    parser.add_argument(
        "--base-port",
        type=int,
        default=None,
        help=f"first port of the suite's range (default: ${BASE_PORT_ENV}, else {registry.DEFAULT_BASE_PORT})",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every service is SERVING, 1 otherwise (2: a base port that cannot be, or TLS settings
    that cannot work)."""
    try:
        ports = PortLayout(resolve_base_port(args.base_port, os.environ))
    except ValueError as exc:
        say(f"parapet status: {exc}")
        return EXIT_USAGE
    try:
        prober = HealthProber()
    except TlsSetupError as exc:
        say(f"parapet status: {exc}")
        return EXIT_USAGE
    rows: list[list[str]] = []
    with prober:
        for spec in registry.SERVICES:
            address = ports.service_address(spec)
            rows.append([spec.name, address, prober.status(address, timeout=2.0)])
    print(render_table(["SERVICE", "ADDRESS", "HEALTH"], rows))
    return 0 if all(row[2] == SERVING for row in rows) else 1
