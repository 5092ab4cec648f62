"""Where ``parapet up`` puts things: ports from one base port, files under one home directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from parapet.cli.registry import (
    METRICS_PORT_OFFSET,
    NATS_PORT_OFFSET,
    POSTGRES_PORT_OFFSET,
    SERVICES,
    ServiceSpec,
)

_HIGHEST_OFFSET = max(
    [NATS_PORT_OFFSET, POSTGRES_PORT_OFFSET, *(METRICS_PORT_OFFSET + s.port_offset for s in SERVICES)]
)


@dataclass(frozen=True)
class PortLayout:
    """Every port of the suite, as fixed offsets from ``base`` (docs/architecture.md)."""

    base: int
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        # Below 1024 needs privileges we do not want to ask for; above, the range must fit in 16 bits.
        if not 1024 <= self.base <= 65535 - _HIGHEST_OFFSET:
            raise ValueError(f"base port must be between 1024 and {65535 - _HIGHEST_OFFSET}, got {self.base}")

    def service_port(self, spec: ServiceSpec) -> int:
        return self.base + spec.port_offset

    def service_address(self, spec: ServiceSpec) -> str:
        return f"{self.host}:{self.service_port(spec)}"

    def metrics_port(self, spec: ServiceSpec) -> int:
        """The service's Prometheus ``/metrics`` port (one per service: they share the host)."""
        return self.base + METRICS_PORT_OFFSET + spec.port_offset

    @property
    def nats_port(self) -> int:
        return self.base + NATS_PORT_OFFSET

    @property
    def postgres_port(self) -> int:
        return self.base + POSTGRES_PORT_OFFSET


# The platform operator's API key file, in the identity directory (auth bootstraps it).
BOOTSTRAP_KEY_NAME = "operator.key"
# The demo tenant's API key file, in the identity directory (``parapet up`` writes it).
DEMO_KEY_NAME = "demo.key"


@dataclass(frozen=True)
class HomeLayout:
    """The files of one suite under its home directory (``$PARAPET_HOME``, default ``./.parapet``)."""

    root: Path

    @property
    def postgres_dir(self) -> Path:
        return self.root / "postgres"

    @property
    def nats_dir(self) -> Path:
        return self.root / "nats"

    @property
    def identity_dir(self) -> Path:
        return self.root / "identity"

    @property
    def operator_key_file(self) -> Path:
        """The platform operator's API key, written by auth at its first start."""
        return self.identity_dir / BOOTSTRAP_KEY_NAME

    @property
    def demo_key_file(self) -> Path:
        """The demo tenant's admin API key, written by ``parapet up``."""
        return self.identity_dir / DEMO_KEY_NAME

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def lock_file(self) -> Path:
        return self.root / "up.lock"

    def log_file(self, spec: ServiceSpec) -> Path:
        return self.logs_dir / f"{spec.name}.log"
