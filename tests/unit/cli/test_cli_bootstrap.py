"""``parapet bootstrap`` refusing before it could issue anything: one line, its exit code, nothing on stdout.

Every case fails before a database answers (a setting missing or unreadable, a closed local port), so none
needs PostgreSQL; the runs that issue keys are in tests/integration/auth/test_bootstrap_command.py.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from parapet.cli import bootstrap, failures
from parapet.cli.main import build_parser, main
from services.auth.bootstrap import ACCOUNTS


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing of auth's settings from the machine running the tests: each case sets what it needs."""
    for name in list(os.environ):
        if name.startswith("PARAPET_"):
            monkeypatch.delenv(name)


@pytest.fixture
def signing_key(tmp_path: Path) -> Path:
    path = tmp_path / "signing_key.pem"
    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def refusal(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``parapet bootstrap ARGV``'s exit code and the one line it said; stdout must stay empty."""
    code = main(["bootstrap", *argv])
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return code, lines[0]


def test_the_accounts_offered_are_those_auth_bootstraps() -> None:
    assert tuple(ACCOUNTS) == bootstrap.ACCOUNT_NAMES


def test_parsing() -> None:
    args = build_parser().parse_args(["bootstrap", "gateway", "--replace"])
    assert (args.account, args.replace, args.execute) == ("gateway", True, bootstrap.execute)
    assert build_parser().parse_args(["bootstrap", "operator"]).replace is False


def test_an_unknown_account(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bootstrap", "root"])
    out, err = capsys.readouterr()
    assert exited.value.code == failures.EXIT_USAGE and out == ""
    assert "invalid choice: 'root'" in err  # argparse's usage line, then its error line


def test_no_database_url(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, signing_key: Path
) -> None:
    monkeypatch.setenv("PARAPET_AUTH_SIGNING_KEY_FILE", str(signing_key))
    code, line = refusal(capsys, "operator")
    assert code == failures.EXIT_USAGE and "PARAPET_DATABASE_URL is not set" in line


def test_no_pepper_would_issue_a_key_that_never_works(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARAPET_DATABASE_URL", f"postgresql+psycopg://u:p@127.0.0.1:{closed_port()}/db")
    code, line = refusal(capsys, "operator")
    assert code == failures.EXIT_USAGE
    assert "PARAPET_AUTH_SIGNING_KEY_FILE" in line and "never authenticate" in line


@pytest.mark.parametrize("content", [b"not a key\n", None], ids=["not-a-key", "missing"])
def test_an_unreadable_signing_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: bytes | None
) -> None:
    path = tmp_path / "signing_key.pem"
    if content is not None:
        path.write_bytes(content)
    monkeypatch.setenv("PARAPET_DATABASE_URL", f"postgresql+psycopg://u:p@127.0.0.1:{closed_port()}/db")
    monkeypatch.setenv("PARAPET_AUTH_SIGNING_KEY_FILE", str(path))
    code, line = refusal(capsys, "gateway")
    assert code == failures.EXIT_USAGE and "cannot read auth's signing key or pepper" in line


def test_a_setting_auth_would_refuse(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARAPET_PORT", "not-a-port")
    code, line = refusal(capsys, "operator")
    assert code == failures.EXIT_USAGE and "PARAPET_PORT" in line


def test_an_unreachable_database(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, signing_key: Path
) -> None:
    monkeypatch.setenv("PARAPET_DATABASE_URL", f"postgresql+psycopg://u:p@127.0.0.1:{closed_port()}/db")
    monkeypatch.setenv("PARAPET_AUTH_SIGNING_KEY_FILE", str(signing_key))
    code, line = refusal(capsys, "operator")
    assert code == failures.EXIT_UNREACHABLE and "the database is unreachable" in line
