"""The database and NATS of a suite: external ones by URL, else embedded ones under the home directory."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from parapet.cli.layout import HomeLayout, PortLayout
from parapet.embedded import EmbeddedNats, EmbeddedPostgres

DATABASE_URL_ENV = "PARAPET_DATABASE_URL"
NATS_URL_ENV = "PARAPET_NATS_URL"


@dataclass(frozen=True)
class Backing:
    """One backing server as the services see it: a URL, and where its log is when we run it."""

    url: str
    log_path: Path | None  # None: external, not ours to run or stop

    @property
    def embedded(self) -> bool:
        return self.log_path is not None


def database(
    env: Mapping[str, str], home: HomeLayout, ports: PortLayout, stack: contextlib.ExitStack
) -> Backing:
    """``PARAPET_DATABASE_URL`` if set, else an embedded PostgreSQL stopped when ``stack`` closes."""
    external = env.get(DATABASE_URL_ENV)
    if external:
        return Backing(external, None)
    server = EmbeddedPostgres(home.postgres_dir, ports.postgres_port, host=ports.host)
    _start(server.start, server.stop, stack)
    return Backing(server.url, server.log_path)


def nats(env: Mapping[str, str], home: HomeLayout, ports: PortLayout, stack: contextlib.ExitStack) -> Backing:
    """``PARAPET_NATS_URL`` if set, else an embedded NATS with JetStream stopped when ``stack`` closes."""
    external = env.get(NATS_URL_ENV)
    if external:
        return Backing(external, None)
    server = EmbeddedNats(home.nats_dir, ports.nats_port, host=ports.host)
    _start(server.start, server.stop, stack)
    return Backing(server.url, server.log_path)


def _start(start: Callable[[], None], stop: Callable[[], None], stack: contextlib.ExitStack) -> None:
    # Registered before starting: a start that fails half-way (process up, never ready) is still stopped.
    stack.callback(stop)
    start()
