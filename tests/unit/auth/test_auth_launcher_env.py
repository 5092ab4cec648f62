"""`parapet up` tells only the auth service where to write the first operator key."""

from __future__ import annotations

from pathlib import Path

from parapet.cli import registry
from parapet.cli.env import SuiteEndpoints, service_env
from parapet.cli.identity import IdentityFiles
from parapet.cli.layout import PortLayout

SUITE = SuiteEndpoints(
    ports=PortLayout(50000),
    database_url="postgresql+psycopg://postgres@127.0.0.1:50021/parapet",
    nats_url="nats://127.0.0.1:50020",
    identity=IdentityFiles(Path("/h/identity/signing_key.pem"), Path("/h/identity/jwks.json")),
)


def test_only_auth_gets_the_bootstrap_key_path() -> None:
    inherited = {"PARAPET_AUTH_BOOTSTRAP_KEY_FILE": "/elsewhere.key"}
    auth_env = service_env(registry.get("auth"), SUITE, inherited)
    assert auth_env["PARAPET_AUTH_BOOTSTRAP_KEY_FILE"] == "/h/identity/operator.key"
    for spec in registry.SERVICES:
        if spec.name != "auth":
            assert "PARAPET_AUTH_BOOTSTRAP_KEY_FILE" not in service_env(spec, SUITE, inherited), spec.name
