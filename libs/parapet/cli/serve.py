"""``parapet serve <service>``: one service in the foreground, exactly what a container runs."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from typing import TYPE_CHECKING, Any

from parapet.cli import registry

if TYPE_CHECKING:
    from parapet.kit.app import ServiceApp

DEFAULT_APPS_PACKAGE = "services"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run one service in the foreground (settings from PARAPET_* environment variables)",
        description="Run one service until SIGTERM/SIGINT, configured from PARAPET_* environment variables.",
    )
    parser.add_argument("service", metavar="SERVICE", help=f"one of: {', '.join(registry.service_names())}")
    parser.add_argument(
        "--apps-package",
        default=DEFAULT_APPS_PACKAGE,
        help="package holding <service>/app.py modules (default: %(default)s; tests use stand-ins)",
    )
    parser.set_defaults(func=run)


def load_app(name: str, apps_package: str = DEFAULT_APPS_PACKAGE) -> ServiceApp[Any]:
    """``APP`` of ``<apps_package>.<name>.app``; the name must be one of the suite's services."""
    registry.get(name)
    module = importlib.import_module(f"{apps_package}.{name}.app")
    app: ServiceApp[Any] = module.APP
    return app


def run(args: argparse.Namespace) -> int:
    try:
        app = load_app(args.service, args.apps_package)
    except registry.UnknownServiceError as exc:
        print(f"parapet serve: {exc}", file=sys.stderr)
        return 2
    # Imported here so `parapet --help` and `parapet up` do not pay for the kit's imports.
    from parapet.kit.server import serve

    asyncio.run(serve(app))
    return 0
