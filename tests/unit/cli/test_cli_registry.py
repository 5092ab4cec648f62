"""The registry lists the eight services once, in start order, on the ports of docs/architecture.md."""

from __future__ import annotations

import pytest

from parapet.cli import registry
from parapet.cli.layout import PortLayout

# docs/architecture.md, "Ports of parapet up".
ARCHITECTURE_OFFSETS = {
    "gateway": 0,
    "auth": 1,
    "retrieval": 2,
    "inference": 3,
    "moderation": 4,
    "metering": 5,
    "audit": 6,
    "billing": 7,
}


def test_every_service_once_with_its_documented_offset() -> None:
    assert {s.name: s.port_offset for s in registry.SERVICES} == ARCHITECTURE_OFFSETS
    assert len(registry.service_names()) == len(set(registry.service_names())) == 8


def test_auth_starts_first_and_the_gateway_last() -> None:
    names = registry.service_names()
    assert names[0] == "auth"
    assert names[-1] == "gateway"


def test_select_keeps_start_order_whatever_order_is_asked() -> None:
    assert [s.name for s in registry.select(["gateway", "auth"])] == ["auth", "gateway"]
    assert registry.select(None) == registry.SERVICES


def test_unknown_names_are_reported_with_the_valid_ones() -> None:
    with pytest.raises(registry.UnknownServiceError) as info:
        registry.select(["gateway", "nope", "zzz"])
    message = str(info.value)
    assert "'nope'" in message and "'zzz'" in message
    assert all(name in message for name in ARCHITECTURE_OFFSETS)
    with pytest.raises(registry.UnknownServiceError):
        registry.get("gatewai")


def test_address_env_names() -> None:
    assert registry.get("metering").address_env == "PARAPET_METERING_ADDRESS"


def test_port_layout_follows_the_base_port() -> None:
    ports = PortLayout(47100)
    assert [ports.service_port(s) for s in registry.select(["gateway", "billing"])] == [47107, 47100]
    assert ports.nats_port == 47120
    assert ports.postgres_port == 47121
    assert ports.service_address(registry.get("auth")) == "127.0.0.1:47101"


@pytest.mark.parametrize("base", [0, 80, 1023, 65535 - 20, 70000])
def test_port_layout_rejects_bases_whose_range_does_not_fit(base: int) -> None:
    with pytest.raises(ValueError, match="base port"):
        PortLayout(base)


def test_no_port_of_the_suite_is_a_standard_port_of_the_machine() -> None:
    ports = PortLayout(registry.DEFAULT_BASE_PORT)
    used = {ports.service_port(s) for s in registry.SERVICES} | {ports.nats_port, ports.postgres_port}
    assert used.isdisjoint({5432, 6379, 4222, 8222})
    assert len(used) == 10
