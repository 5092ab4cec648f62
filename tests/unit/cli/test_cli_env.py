"""The environment each service process gets, and the identity files behind it."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from parapet.cli import registry
from parapet.cli.env import SuiteEndpoints, service_env
from parapet.cli.identity import IdentityFiles, provision, public_jwk
from parapet.cli.layout import PortLayout

SUITE = SuiteEndpoints(
    ports=PortLayout(50000),
    database_url="postgresql+psycopg://postgres@127.0.0.1:50021/parapet",
    nats_url="nats://127.0.0.1:50020",
    identity=IdentityFiles(Path("/h/identity/signing_key.pem"), Path("/h/identity/jwks.json")),
)


def test_service_env_has_port_servers_identity_and_every_peer() -> None:
    env = service_env(registry.get("metering"), SUITE, {"PATH": "/bin", "PARAPET_PORT": "1"})
    assert env["PATH"] == "/bin"
    assert env["PARAPET_PORT"] == "50005"
    assert env["PARAPET_HOST"] == "127.0.0.1"
    assert env["PARAPET_DATABASE_URL"] == SUITE.database_url
    assert env["PARAPET_NATS_URL"] == SUITE.nats_url
    assert env["PARAPET_IDENTITY_JWKS_FILE"] == "/h/identity/jwks.json"
    for spec in registry.SERVICES:
        assert env[spec.address_env] == f"127.0.0.1:{50000 + spec.port_offset}"


def test_only_auth_is_told_where_the_signing_key_is() -> None:
    inherited = {"PARAPET_AUTH_SIGNING_KEY_FILE": "/elsewhere.pem"}
    assert service_env(registry.get("auth"), SUITE, inherited)["PARAPET_AUTH_SIGNING_KEY_FILE"] == (
        "/h/identity/signing_key.pem"
    )
    for spec in registry.SERVICES:
        if spec.name != "auth":
            assert "PARAPET_AUTH_SIGNING_KEY_FILE" not in service_env(spec, SUITE, inherited)


def test_auth_writes_and_only_the_gateway_reads_the_gateway_service_key() -> None:
    inherited = {
        "PARAPET_AUTH_GATEWAY_KEY_FILE": "/elsewhere.key",
        "PARAPET_GATEWAY_JOB_SERVICE_KEY_FILE": "/elsewhere.key",
    }
    written = service_env(registry.get("auth"), SUITE, inherited)
    read = service_env(registry.get("gateway"), SUITE, inherited)
    assert written["PARAPET_AUTH_GATEWAY_KEY_FILE"] == "/h/identity/gateway.key"
    assert read["PARAPET_GATEWAY_JOB_SERVICE_KEY_FILE"] == "/h/identity/gateway.key"
    assert "PARAPET_GATEWAY_JOB_SERVICE_KEY_FILE" not in written
    assert "PARAPET_AUTH_GATEWAY_KEY_FILE" not in read
    for spec in registry.SERVICES:
        if spec.name not in ("auth", "gateway"):
            env = service_env(spec, SUITE, inherited)
            assert not env.keys() & inherited.keys()


def test_service_env_does_not_modify_its_base() -> None:
    base = {"PATH": "/bin"}
    service_env(registry.get("gateway"), SUITE, base)
    assert base == {"PATH": "/bin"}


def test_identity_is_provisioned_once_and_the_jwks_matches_the_key(tmp_path: Path) -> None:
    files = provision(tmp_path / "identity")
    assert stat.S_IMODE(files.signing_key_file.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(files.signing_key_file.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    jwks = json.loads(files.jwks_file.read_text())
    assert jwks == {"keys": [public_jwk(key.public_key())]}
    assert jwks["keys"][0]["kty"] == "OKP" and jwks["keys"][0]["alg"] == "EdDSA"

    again = provision(tmp_path / "identity")
    assert again == files
    assert json.loads(again.jwks_file.read_text()) == jwks


def test_kid_is_the_rfc7638_thumbprint() -> None:
    # RFC 8037 appendix A.3: the thumbprint of its example Ed25519 key.
    raw = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    jwk = public_jwk(Ed25519PublicKey.from_public_bytes(raw))
    assert jwk["x"] == "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    assert jwk["kid"] == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_keys_already_in_the_jwks_are_kept(tmp_path: Path) -> None:
    identity = tmp_path / "identity"
    identity.mkdir()
    retired = {"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "retired", "alg": "EdDSA", "use": "sig"}
    (identity / "jwks.json").write_text(json.dumps({"keys": [retired]}))
    files = provision(identity)
    kids = [k["kid"] for k in json.loads(files.jwks_file.read_text())["keys"]]
    assert kids[0] == "retired" and len(kids) == 2
    provision(identity)
    assert len(json.loads(files.jwks_file.read_text())["keys"]) == 2


def test_only_moderation_gets_the_masking_key_and_it_survives_restarts(tmp_path: Path) -> None:
    identity = provision(tmp_path / "identity")
    suite = SuiteEndpoints(SUITE.ports, SUITE.database_url, SUITE.nats_url, identity)
    key = service_env(registry.get("moderation"), suite, {"PARAPET_MASKING_KEY": "inherited"})[
        "PARAPET_MASKING_KEY"
    ]
    assert len(base64.b64decode(key)) == 32
    assert identity.masking_key_file is not None and identity.masking_key_file.stat().st_mode & 0o077 == 0
    again = SuiteEndpoints(SUITE.ports, SUITE.database_url, SUITE.nats_url, provision(tmp_path / "identity"))
    assert service_env(registry.get("moderation"), again, {})["PARAPET_MASKING_KEY"] == key
    for spec in registry.SERVICES:
        if spec.name != "moderation":
            assert "PARAPET_MASKING_KEY" not in service_env(spec, suite, {"PARAPET_MASKING_KEY": "inherited"})
