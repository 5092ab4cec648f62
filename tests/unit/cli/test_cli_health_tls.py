"""The launcher's health probes speak TLS when the suite does, so `parapet up`/`status` work with mTLS."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from parapet.cli.health import SERVING, HealthProber, suite_credentials
from parapet.kit.config import ServiceSettings
from parapet.kit.testing import generic_app, make_pki, running


async def test_probes_use_the_suites_mutual_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pki = make_pki(tmp_path, "parapet")
    for name, value in {
        "PARAPET_TLS_CERT_FILE": pki.cert,
        "PARAPET_TLS_KEY_FILE": pki.key,
        "PARAPET_TLS_CA_FILE": pki.ca,
        "PARAPET_TLS_REQUIRE_CLIENT_CERT": "true",
    }.items():
        monkeypatch.setenv(name, str(value))
    settings = ServiceSettings(port=0, health_interval_seconds=0.2, shutdown_grace_seconds=0.5)
    async with running(generic_app(), settings) as (_, port):
        address = f"127.0.0.1:{port}"
        with HealthProber() as prober:  # credentials from the environment, as the launcher has them
            assert await asyncio.to_thread(prober.status, address, timeout=5.0) == SERVING
        monkeypatch.delenv("PARAPET_TLS_CA_FILE")
        monkeypatch.delenv("PARAPET_TLS_REQUIRE_CLIENT_CERT")
        assert suite_credentials() is None
        with HealthProber() as plaintext:  # a plaintext probe cannot reach a TLS server
            assert await asyncio.to_thread(plaintext.status, address, timeout=2.0) != SERVING
