"""``parapet up``: the whole suite on one machine, supervised until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from parapet.cli import infra, registry
from parapet.cli.env import SuiteEndpoints, service_env
from parapet.cli.health import TlsSetupError, suite_credentials
from parapet.cli.identity import IdentityError, provision
from parapet.cli.inputs import positive_seconds
from parapet.cli.layout import HomeLayout, PortLayout
from parapet.cli.output import endpoints_table
from parapet.cli.serve import DEFAULT_APPS_PACKAGE
from parapet.cli.supervisor import ManagedProcess, StartupError, StopFlag, Supervisor
from parapet.embedded import EmbeddedStartError
from parapet.embedded.ports import port_is_open

HOME_ENV = "PARAPET_HOME"
BASE_PORT_ENV = "PARAPET_BASE_PORT"
STARTUP_TIMEOUT = 60.0
# Longer than the kit's default drain grace, so a service finishing in-flight streams is not killed.
STOP_TIMEOUT = 20.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class UpError(RuntimeError):
    """A problem found before anything was started (ports in use, home locked)."""


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "up",
        help="start the whole suite on this machine (embedded PostgreSQL and NATS unless given by URL)",
        description=(
            "Start PostgreSQL (pgvector) and NATS (JetStream) under the home directory unless "
            "PARAPET_DATABASE_URL / PARAPET_NATS_URL name external ones, then every service as its own "
            "process; wait until all are SERVING, print the endpoints, and supervise until Ctrl-C."
        ),
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help=f"where data, keys and logs go (default: ${HOME_ENV}, else ./.parapet)",
    )
    add_base_port_argument(parser)
    parser.add_argument(
        "--only",
        type=_csv,
        default=None,
        metavar="SVC,SVC",
        help=f"start only these services (of: {', '.join(registry.service_names())})",
    )
    parser.add_argument(
        "--startup-timeout",
        type=positive_seconds,
        default=STARTUP_TIMEOUT,
        help="seconds for every service to report SERVING (default: %(default)g)",
    )
    parser.add_argument(
        "--apps-package",
        default=DEFAULT_APPS_PACKAGE,
        help="package holding <service>/app.py modules (default: %(default)s; tests use stand-ins)",
    )
    parser.add_argument(
        "--no-demo",
        action="store_true",
        help="do not set up the demo tenant (tenant, key in <home>/identity/demo.key, sample documents)",
    )
    parser.set_defaults(func=run)


def add_base_port_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--base-port",
        type=int,
        default=None,
        help=f"first port of the suite's range (default: ${BASE_PORT_ENV}, else {registry.DEFAULT_BASE_PORT})",
    )


def resolve_home(arg: Path | None, env: Mapping[str, str]) -> Path:
    return (arg or Path(env.get(HOME_ENV) or ".parapet")).resolve()


def resolve_base_port(arg: int | None, env: Mapping[str, str]) -> int:
    if arg is not None:
        return arg
    raw = env.get(BASE_PORT_ENV)
    if not raw:
        return registry.DEFAULT_BASE_PORT
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"${BASE_PORT_ENV} must be a port number, not {raw!r}") from None


def serve_argv(name: str, apps_package: str) -> list[str]:
    """How a service is started: the same ``serve`` a container runs, by this very interpreter."""
    argv = [sys.executable, "-m", "parapet.cli", "serve", name]
    if apps_package != DEFAULT_APPS_PACKAGE:
        argv += ["--apps-package", apps_package]
    return argv


def ports_in_use(
    ports: PortLayout, specs: Sequence[registry.ServiceSpec], env: Mapping[str, str]
) -> list[str]:
    wanted = [(spec.name, ports.service_port(spec)) for spec in specs]
    if not env.get(infra.NATS_URL_ENV):
        wanted.append(("nats", ports.nats_port))
    if not env.get(infra.DATABASE_URL_ENV):
        wanted.append(("postgres", ports.postgres_port))
    return [f"{port} ({name})" for name, port in wanted if port_is_open(ports.host, port)]


@contextlib.contextmanager
def _home_lock(home: HomeLayout) -> Iterator[None]:
    # Two launchers on one home would fight over the same PostgreSQL data directory.
    home.root.mkdir(parents=True, exist_ok=True)
    # Opened without truncating: a launcher that is refused must not erase the running one's pid.
    with home.lock_file.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise UpError(f"another 'parapet up' (pid {holder}) is running with home {home.root}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield


@contextlib.contextmanager
def _stop_requested() -> Iterator[StopFlag]:
    """A flag set by SIGINT/SIGTERM/SIGHUP: every wait of the launcher wakes on it, nothing is raised."""
    stop = StopFlag()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in _STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _say(message: str, stream: IO[str] | None = None) -> None:
    print(message, file=stream or sys.stdout, flush=True)


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    try:
        specs = registry.select(args.only)
        ports = PortLayout(resolve_base_port(args.base_port, env))
        # The launcher probes its services with these credentials: a TLS file that is missing would otherwise
        # be found only once PostgreSQL, NATS and every service had been started.
        suite_credentials()
    except (ValueError, TlsSetupError) as exc:
        _say(f"parapet up: {exc}", sys.stderr)
        return 2
    home = HomeLayout(resolve_home(args.home, env))
    try:
        return _run(specs, ports, home, env, args)
    # An embedded server that would not start says why and where its log is: no traceback to read past.
    except (UpError, StartupError, EmbeddedStartError, IdentityError, TlsSetupError) as exc:
        _say(f"parapet up: {exc}", sys.stderr)
        return 1
    except BrokenPipeError:
        raise  # stdout closed (``parapet up | head``): main's quiet exit, not a problem of the home
    except OSError as exc:  # a home on a read-only or full disk, a path through a file: the file and why
        _say(f"parapet up: cannot use {exc.filename or home.root}: {exc.strerror or exc}", sys.stderr)
        return 1


def _run(
    specs: Sequence[registry.ServiceSpec],
    ports: PortLayout,
    home: HomeLayout,
    env: dict[str, str],
    args: argparse.Namespace,
) -> int:
    with _stop_requested() as stop, _home_lock(home), contextlib.ExitStack() as stack:
        # After the lock: a second launcher on this home finds its ports taken by the first one's suite, and
        # the lock names the real reason (which another --base-port would not have cured).
        busy = ports_in_use(ports, specs, env)
        if busy:
            raise UpError(f"ports in use: {', '.join(busy)}; choose another range with --base-port")
        # Before anything starts: damaged keys or a home that cannot be written stop the launcher at once.
        identity = provision(home.identity_dir)
        # Closed in reverse: services first (registered last), then NATS, then PostgreSQL.
        database = infra.database(env, home, ports, stack)
        if stop.is_set():
            return 0
        nats = infra.nats(env, home, ports, stack)
        if stop.is_set():
            return 0
        suite = SuiteEndpoints(ports, database.url, nats.url, identity)
        processes = [
            ManagedProcess(
                spec=spec,
                argv=serve_argv(spec.name, args.apps_package),
                env=service_env(spec, suite, env),
                log_path=home.log_file(spec),
                address=ports.service_address(spec),
            )
            for spec in specs
        ]
        supervisor = Supervisor(processes, report=lambda msg: _say(f"parapet up: {msg}"))
        stack.callback(_stopping, supervisor)
        supervisor.start_all()
        if not supervisor.wait_serving(args.startup_timeout, stop):
            return 0
        _say(endpoints_table(home.root, processes, database, nats))
        _offer_demo(args, specs, home, ports, env, stack)
        gave_up = supervisor.supervise(stop)
        if gave_up is None:
            return 0
        _say(
            f"parapet up: {gave_up.service} failed {gave_up.failures} times in a row; stopping everything",
            sys.stderr,
        )
        return 1


def _offer_demo(
    args: argparse.Namespace,
    specs: Sequence[registry.ServiceSpec],
    home: HomeLayout,
    ports: PortLayout,
    env: Mapping[str, str],
    stack: contextlib.ExitStack,
) -> None:
    from parapet.cli import demo

    names = {spec.name for spec in specs}
    if args.no_demo or args.apps_package != DEFAULT_APPS_PACKAGE or not all(n in names for n in demo.NEEDED):
        return
    background = demo.BackgroundDemo(
        home, ports, env, lambda message, error: _say(message, sys.stderr if error else None)
    )
    stack.callback(background.stop)  # registered last, so it runs before the services are stopped
    background.start()


def _stopping(supervisor: Supervisor) -> None:
    _say("parapet up: stopping")
    supervisor.stop_all(STOP_TIMEOUT)
