"""``parapet serve <service>``: one service in the foreground, exactly what a container runs."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from parapet.cli import registry

if TYPE_CHECKING:
    from parapet.kit.app import ServiceApp

DEFAULT_APPS_PACKAGE = "services"
# EX_SOFTWARE: the service stopped, but a task of its own refused to: a bug to look at, not a clean exit.
EXIT_TASKS_IGNORED_CANCELLATION = 70
# After the server has stopped, how long tasks still running get to finish once cancelled.
LEFTOVER_GRACE_SECONDS = 5.0


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
    from parapet.kit.loop import run as run_on_service_loop  # uvloop when installed; imports only asyncio

    if not run_on_service_loop(_serve_and_settle(app)):
        # Some task ignored cancellation: asyncio.run would wait for it forever, and a process whose
        # server has stopped must still exit (nobody SIGKILLs it when the launcher itself was killed).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_TASKS_IGNORED_CANCELLATION)
    return 0


async def _serve_and_settle(app: ServiceApp[Any]) -> bool:
    """Serve until told to stop, then cancel leftover tasks; False if some would not finish."""
    # Imported here so `parapet --help` and `parapet up` do not pay for the kit's imports.
    from parapet.kit.server import serve

    await serve(app)
    leftovers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in leftovers:
        task.cancel()
    if not leftovers:
        return True
    _, pending = await asyncio.wait(leftovers, timeout=LEFTOVER_GRACE_SECONDS)
    if pending:
        event = {
            "event": "tasks ignored cancellation after stop; exiting anyway",
            "service": app.name,
            "tasks": [repr(task.get_coro()) for task in pending],
        }
        print(json.dumps(event), file=sys.stderr, flush=True)
    return not pending
