"""End to end: ``parapet up`` starts the whole suite, a Node.js client uses it, SIGTERM stops it all."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import google.rpc
import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy.engine import make_url

from parapet.cli import registry
from parapet.kit.redact import redact_url
from tests.e2e.support import (
    REPO,
    LaunchUp,
    command_line,
    command_name,
    descendants,
    environment,
    still_alive,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# The main service of each area, from the brief; each server may list more (e.g. auth's admin services).
MAIN_SERVICE = {
    "gateway": "parapet.gateway.v1.ChatService",
    "auth": "parapet.auth.v1.AuthService",
    "retrieval": "parapet.retrieval.v1.RetrievalService",
    "inference": "parapet.inference.v1.InferenceService",
    "moderation": "parapet.moderation.v1.ModerationService",
    "metering": "parapet.metering.v1.MeteringService",
    "audit": "parapet.audit.v1.AuditService",
    "billing": "parapet.billing.v1.BillingService",
}
# A hang guard, not a speed claim: a cold start (fresh caches, initdb, models loaded from disk) on a slow,
# shared two-core machine was seen to take over 60 s while the suite's own start was fine.
STARTUP_BOUND = 150.0
# The launcher's own bound (20 s for services) plus NATS and PostgreSQL stops, with room for a slow CI.
STOP_BOUND = 45.0


def reflected_services(address: str) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = stub.ServerReflectionInfo(iter([request]), timeout=10)
        return [service.name for response in responses for service in response.list_services_response.service]


def run_node_client(address: str, env: dict[str, str] | None = None) -> dict[str, object]:
    node = shutil.which("node")
    assert node is not None, "node is required (make install puts it there)"
    # google/rpc/*.proto ship in googleapis-common-protos; protobufjs knows google/protobuf/* itself.
    googleapis = Path(next(iter(google.rpc.__path__))).parent.parent
    completed = subprocess.run(
        [node, "tests/e2e/node/health_and_chat.js", address, "protos", str(googleapis)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert completed.stdout.strip(), f"node printed nothing; stderr:\n{completed.stderr}"
    result: dict[str, object] = json.loads(completed.stdout.strip().splitlines()[-1])
    assert completed.returncode == 0, result
    return result


def test_parapet_up_serves_everything_to_a_node_client_and_stops_clean(launch_up: LaunchUp) -> None:
    up = launch_up()
    up.wait_serving(registry.SERVICES, STARTUP_BOUND)
    table = up.wait_table()
    for spec in registry.SERVICES:
        assert up.ports.service_address(spec) in table
    operator_key = up.home / "identity" / "operator.key"
    assert f"operator  API key in {operator_key}" in table and operator_key.read_text().strip() not in table
    tree = descendants(up.proc.pid)
    assert {"postgres", "nats-server"} <= {command_name(pid) for pid in tree}

    for spec in registry.SERVICES:
        names = reflected_services(up.ports.service_address(spec))
        assert MAIN_SERVICE[spec.name] in names, (spec.name, names)
        assert "grpc.health.v1.Health" in names
        assert all(n.endswith("Service") for n in names if n.startswith(f"parapet.{spec.name}.v1."))

    status = subprocess.run(
        [sys.executable, "-m", "parapet.cli", "status", "--base-port", str(up.ports.base)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("SERVING") == len(registry.SERVICES), status.stdout

    gateway = up.ports.service_address(registry.get("gateway"))
    result = run_node_client(gateway)
    assert result["health"] == "SERVING", result
    chat = result["chat"]
    # Without a credential the chat is refused with a typed answer, whose ErrorInfo a Node client decodes (a
    # streaming chat from Node with a real key: tests/e2e/test_gateway_chat.py).
    assert isinstance(chat, dict), result
    assert (chat.get("status"), chat.get("reason"), chat.get("domain")) == (
        "UNAUTHENTICATED",
        "CREDENTIAL_MISSING",
        "parapet.dev",
    ), result

    assert up.terminate(STOP_BOUND) == 0, up.logs()
    assert still_alive(tree) == {}, up.logs()


def test_parapet_up_uses_external_database_and_nats_when_given(
    launch_up: LaunchUp, database_url: str, nats_url: str
) -> None:
    up = launch_up(
        "--only", "gateway", env={"PARAPET_DATABASE_URL": database_url, "PARAPET_NATS_URL": nats_url}
    )
    gateway = registry.get("gateway")
    up.wait_serving((gateway,), STARTUP_BOUND)
    table = up.wait_table()
    # Shown, but without their secrets.
    assert f"database  {redact_url(database_url)}  (external)" in table
    assert f"nats      {redact_url(nats_url)}  (external)" in table
    password = make_url(database_url).password
    assert "***" in table and (password is None or password not in table)

    tree = descendants(up.proc.pid)
    names = {command_name(pid) for pid in tree}
    assert "postgres" not in names and "nats-server" not in names, names
    assert not (up.home / "postgres").exists() and not (up.home / "nats").exists()
    # The gateway reached them: it reports SERVING only while its database and NATS answer.
    (service,) = [pid for pid in tree if command_line(pid)[-2:] == ["serve", "gateway"]]
    env = environment(service)
    assert env["PARAPET_DATABASE_URL"] == database_url and env["PARAPET_NATS_URL"] == nats_url

    assert up.terminate(STOP_BOUND) == 0, up.logs()
    assert still_alive(tree) == {}, up.logs()


def test_a_killed_launcher_leaves_no_process_behind(launch_up: LaunchUp) -> None:
    # SIGKILL gives the launcher no chance to clean up: its children must die on their own
    # (PR_SET_PDEATHSIG), PostgreSQL included, though as root it runs as another user.
    up = launch_up("--only", "gateway")
    up.wait_serving((registry.get("gateway"),), STARTUP_BOUND)
    up.wait_table()
    tree = descendants(up.proc.pid)
    assert {"postgres", "nats-server"} <= {command_name(pid) for pid in tree}
    up.proc.kill()
    up.proc.wait()
    deadline = time.monotonic() + STOP_BOUND
    while still_alive(tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert still_alive(tree) == {}, up.logs()
    # The services shut down by themselves, not by the serve command's last-resort exit.
    assert "ignored cancellation" not in up.logs(), up.logs()
