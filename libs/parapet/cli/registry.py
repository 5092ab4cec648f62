"""The services of the suite, in start order, with their port offsets: the one place that lists them.

Ports follow docs/architecture.md ("Ports of parapet up"). Start order puts the services others call
first (auth issues identity, the gateway calls everyone), so a cold start shows fewer transient
UNAVAILABLE retries in the logs; correctness does not depend on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_BASE_PORT = 47100
NATS_PORT_OFFSET = 20
POSTGRES_PORT_OFFSET = 21
METRICS_PORT_OFFSET = 30  # each service's Prometheus endpoint: base + 30 + its own offset


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the suite: its name (also its package ``services.<name>``) and port offset."""

    name: str
    port_offset: int

    @property
    def address_env(self) -> str:
        """Environment variable through which the other services find this one."""
        return f"PARAPET_{self.name.upper()}_ADDRESS"


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("auth", 1),
    ServiceSpec("moderation", 4),
    ServiceSpec("metering", 5),
    ServiceSpec("audit", 6),
    ServiceSpec("billing", 7),
    ServiceSpec("retrieval", 2),
    ServiceSpec("inference", 3),
    ServiceSpec("gateway", 0),
)

_BY_NAME = {spec.name: spec for spec in SERVICES}


class UnknownServiceError(ValueError):
    """A service name that is not part of the suite; the message lists the valid ones."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(names)
        super().__init__(
            f"unknown service {', '.join(repr(n) for n in self.names)}; valid: {', '.join(service_names())}"
        )


def service_names() -> tuple[str, ...]:
    """All service names, in start order."""
    return tuple(spec.name for spec in SERVICES)


def get(name: str) -> ServiceSpec:
    """The service called ``name``; raises UnknownServiceError naming the valid ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UnknownServiceError([name]) from None


def select(only: Iterable[str] | None = None) -> tuple[ServiceSpec, ...]:
    """The services named in ``only`` (all when None), always in start order."""
    if only is None:
        return SERVICES
    wanted = set(only)
    unknown = sorted(wanted - _BY_NAME.keys())
    if unknown:
        raise UnknownServiceError(unknown)
    return tuple(spec for spec in SERVICES if spec.name in wanted)
