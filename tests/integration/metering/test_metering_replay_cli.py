"""``parapet usage replay`` against the real auth and metering services: a platform operator's API key is
exchanged at auth for a token carrying the permissions auth resolved, and metering replays; a key of the
platform tenant's ``admin`` role (no platform.admin) is refused, one line, exit 1."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from parapet.cli import failures
from parapet.cli.main import build_parser
from parapet.kit.testing import running
from services.metering.app import APP as METERING
from services.metering.settings import MeteringSettings
from tests.integration.auth.conftest import PLATFORM, running_auth
from tests.integration.metering.metering_support import FAST


async def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    code: int = await failures.run_async(args)
    return code


async def test_usage_replay_as_a_platform_operator_and_as_a_tenant_admin(
    tmp_path: Path,
    database_url: str,
    nats_url: str,
    signing_key_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_auth(database_url, nats_url, signing_key_file) as auth:
        suffix = uuid.uuid4().hex[:8]
        await auth.new_user(PLATFORM, f"operator-{suffix}", ("platform-admin",))
        await auth.new_user(PLATFORM, f"helper-{suffix}", ("admin",))
        _id, operator_key = await auth.new_key(PLATFORM, f"operator-{suffix}")
        _id, helper_key = await auth.new_key(PLATFORM, f"helper-{suffix}")
        # Identity keys and tenant policies from auth, as deployed (no JWKS or policy file).
        overrides: dict[str, Any] = {
            **FAST,
            "database_url": database_url,
            "nats_url": nats_url,
            "auth_address": auth.target,
        }
        settings = MeteringSettings(**overrides)
        monkeypatch.setenv("PARAPET_AUTH_ADDRESS", auth.target)
        monkeypatch.delenv("PARAPET_API_KEY", raising=False)
        async with running(METERING, settings) as (_server, port):
            common = ["--since", "10m", "--address", f"127.0.0.1:{port}"]
            assert await _run(["usage", "replay", *common, "--api-key", operator_key, "--json"]) == 0
            reply = json.loads(capsys.readouterr().out)
            assert int(reply.get("event_count", "0")) >= 0 and reply["earliest_start_time"]

            assert await _run(["usage", "replay", *common, "--api-key", helper_key]) == failures.EXIT_FAILED
            err = capsys.readouterr().err.strip()
            assert "\n" not in err and "PERMISSION_DENIED" in err and "platform.admin" in err
