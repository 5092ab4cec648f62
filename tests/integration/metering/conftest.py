"""Fixtures of the metering tests: signing keys, a policy file, a running metering server and its stub."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc.aio
import pytest

from parapet.kit.testing import TestKeys, make_test_keys, running
from parapet.metering.v1 import metering_service_pb2_grpc
from services.metering.app import APP
from tests.integration.auth.conftest import signing_key_file
from tests.integration.metering.metering_support import metering_settings

__all__ = ["signing_key_file"]  # auth's signing key, for the tests that run the real auth service


@pytest.fixture(scope="module")
def keys() -> TestKeys:
    return make_test_keys()


@dataclass
class Metering:
    stub: metering_service_pb2_grpc.MeteringServiceStub
    policy_file: Path


@pytest.fixture
async def metering(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str
) -> AsyncIterator[Metering]:
    """A metering server whose policies come from ``policy_file`` (tests write it before the first call)."""
    policy_file = tmp_path / "policies.json"
    policy_file.write_text("{}")
    settings = metering_settings(tmp_path, keys, database_url, nats_url, policy_file)
    async with (
        running(APP, settings) as (_server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield Metering(metering_service_pb2_grpc.MeteringServiceStub(channel), policy_file)
