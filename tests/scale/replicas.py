"""Two replicas of every service as ``parapet serve`` processes against one PostgreSQL and one NATS.

Each replica gets the environment ``parapet up`` gives a service (``parapet.cli.env.service_env``) on a port
range of its own, except the peer addresses: every ``PARAPET_<SERVICE>_ADDRESS`` lists both replicas as an
``ipv4:`` target, over which the kit's channels balance round robin (docs/deploy.md, "Scale-out").
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from parapet.cli.env import SuiteEndpoints, service_env
from parapet.cli.health import SERVING, HealthProber
from parapet.cli.identity import IdentityFiles, provision
from parapet.cli.layout import PortLayout
from parapet.cli.registry import SERVICES, ServiceSpec
from parapet.cli.serve import DEFAULT_APPS_PACKAGE
from parapet.cli.supervisor import ManagedProcess, log_tail
from parapet.cli.up import serve_argv
from parapet.embedded.ports import port_is_open

REPLICAS = 2
# Settings that keep sixteen processes within two cores: the semantic cache (a MiniLM model per inference
# replica) and the NER model of moderation are features of their own, not what scale-out is about.
EXTRA_ENV = {
    "PARAPET_CACHE_ENABLED": "false",
    "PARAPET_NER_ENABLED": "false",
    "PARAPET_LOG_LEVEL": "WARNING",
}
# A replica's ports: services at +0..+7, their metrics at +30..+37 (PortLayout).
_SPAN = 38


def free_layouts(count: int) -> list[PortLayout]:
    """``count`` port layouts whose whole ranges are free now and do not overlap."""
    layouts: list[PortLayout] = []
    base = 20000 + (os.getpid() * 97) % 10000
    while len(layouts) < count:
        if base > 60000:
            raise RuntimeError("no free port ranges found")
        if not any(port_is_open("127.0.0.1", base + i) for i in range(_SPAN)):
            layouts.append(PortLayout(base))
        base += _SPAN + 2
    return layouts


def target(layouts: list[PortLayout], spec: ServiceSpec) -> str:
    """A gRPC target naming every replica of ``spec``: the kit's round robin spreads calls over them."""
    return "ipv4:" + ",".join(layout.service_address(spec) for layout in layouts)


@dataclass
class Replica:
    spec: ServiceSpec
    index: int
    layout: PortLayout
    process: ManagedProcess

    @property
    def name(self) -> str:
        return f"{self.spec.name}-{self.index}"

    @property
    def address(self) -> str:
        return self.layout.service_address(self.spec)

    @property
    def metrics_port(self) -> int:
        return self.layout.metrics_port(self.spec)

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def start(self) -> None:
        self.process.start(time.monotonic())

    def signal(self, sig: signal.Signals) -> None:
        # Each replica leads its own process group (spawn starts a session): anything it forked goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def wait_exit(self, timeout: float) -> int:
        assert self.process.proc is not None
        return self.process.proc.wait(timeout)


@dataclass
class ReplicaSuite:
    """The replicas of every service, ``replicas[name][i]``."""

    layouts: list[PortLayout]
    identity: IdentityFiles
    replicas: dict[str, list[Replica]] = field(default_factory=dict)

    def target(self, name: str) -> str:
        return target(self.layouts, self.replicas[name][0].spec)

    def all(self) -> list[Replica]:
        return [replica for group in self.replicas.values() for replica in group]

    def logs(self) -> str:
        return "\n".join(f"--- {r.name}:\n{log_tail(r.process.log_path, 15)}" for r in self.all())

    def wait_serving(self, replicas: list[Replica], timeout: float) -> None:
        """Block until every one of ``replicas`` answers SERVING; fail with their logs otherwise."""
        deadline = time.monotonic() + timeout
        pending = {r.name: r for r in replicas}
        with HealthProber() as prober:
            while pending:
                for name, replica in list(pending.items()):
                    code = replica.process.exit_code()
                    if code is not None:
                        pytest.fail(f"{name} exited with {code} while starting\n{self.logs()}")
                    if prober.status(replica.address, timeout=1.0) == SERVING:
                        del pending[name]
                if pending and time.monotonic() > deadline:
                    pytest.fail(f"not SERVING within {timeout:g} s: {sorted(pending)}\n{self.logs()}")
                time.sleep(0.2)

    def stop(self, timeout: float = 20.0) -> None:
        running = [r for r in self.all() if r.process.exit_code() is None and r.process.proc is not None]
        for replica in running:
            replica.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for replica in running:
            try:
                replica.wait_exit(max(deadline - time.monotonic(), 0.1))
            except Exception:
                replica.signal(signal.SIGKILL)
                replica.wait_exit(10)


def replica_env(
    spec: ServiceSpec, suite: SuiteEndpoints, peers: Mapping[str, str], base: Mapping[str, str]
) -> dict[str, str]:
    """What ``parapet up`` gives ``spec`` in ``suite``, with every peer address naming all replicas."""
    env = service_env(spec, suite, base)
    env.update(peers)
    env.update(EXTRA_ENV)
    return env


@contextlib.contextmanager
def replica_suite(
    database_url: str, nats_url: str, home: Path, replicas: int = REPLICAS
) -> Iterator[ReplicaSuite]:
    """Start ``replicas`` replicas of every service; stop them all on exit."""
    layouts = free_layouts(replicas)
    identity = provision(home / "identity")
    peers = {spec.address_env: target(layouts, spec) for spec in SERVICES}
    suite = ReplicaSuite(layouts, identity)
    base = {k: v for k, v in os.environ.items() if not k.startswith("PARAPET_")}
    for spec in SERVICES:
        suite.replicas[spec.name] = []
        for index, layout in enumerate(layouts):
            endpoints = SuiteEndpoints(layout, database_url, nats_url, identity)
            process = ManagedProcess(
                spec=spec,
                argv=serve_argv(spec.name, DEFAULT_APPS_PACKAGE),
                env=replica_env(spec, endpoints, peers, base),
                log_path=home / "logs" / f"{spec.name}-{index}.log",
                address=layout.service_address(spec),
            )
            suite.replicas[spec.name].append(Replica(spec, index, layout, process))
    try:
        for replica in suite.all():
            replica.start()
        suite.wait_serving(suite.all(), timeout=180)
        yield suite
    finally:
        suite.stop()
