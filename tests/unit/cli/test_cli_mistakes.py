"""A person's ordinary mistakes, through the CLI's entry point: one clear line, a non-zero exit, no traceback.

Every case fails before any call (or, for a service that is down, at a closed local port), so none needs a
running suite. docs/cli.md, "Errors and exit codes".
"""

from __future__ import annotations

import io
import os
import socket
import sys
from pathlib import Path

import pytest

from parapet.cli import connect, failures
from parapet.cli.main import main
from services.auth import apikeys

KEY = "pk_abcdefghijkl_" + "B" * 43  # the shape auth issues; no service ever sees it here
PEM = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ\n-----END PRIVATE KEY-----\n"
BINARY = bytes(range(128, 256))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credential, TLS or port from the machine running the tests: each case sets what it needs."""
    for name in ("PARAPET_API_KEY", "PARAPET_BASE_PORT", "PARAPET_TLS_CA_FILE", "PARAPET_TLS_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("PARAPET_TLS_KEY_FILE", raising=False)
    monkeypatch.setenv("PARAPET_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``parapet ARGV``: its exit code and its stderr (argparse's usage errors exit through SystemExit)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    """The single line the command said; a traceback or a second line fails the test."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def demo_key(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "home" / "identity" / "demo.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("argv", [["usage"], ["keys", "list"], ["chat", "hi"]])
def test_binary_key_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]) -> None:
    path = demo_key(tmp_path, BINARY)
    code, err = run(capsys, *argv)
    assert code == failures.EXIT_USAGE
    assert one_line(err).endswith(f"the API key file {path} is not UTF-8 text (a binary file?)")


def test_key_file_that_is_a_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "home" / "identity" / "demo.key"
    path.mkdir(parents=True)
    code, err = run(capsys, "usage")
    assert code == failures.EXIT_USAGE and f"cannot read the API key file {path}" in one_line(err)


@pytest.mark.parametrize(
    ("argv", "env", "source"),
    [
        (["chat", "hi", "--api-key", "é"], {}, "--api-key"),
        (["jobs", "list", "--api-key", "é"], {}, "--api-key"),
        (["jobs", "list", "--api-key", PEM], {}, "--api-key"),
        (["chat", "hi"], {"PARAPET_API_KEY": "sk-proj-not-ours"}, "$PARAPET_API_KEY"),
        (["usage"], {"PARAPET_API_KEY": KEY + "\n" + KEY}, "$PARAPET_API_KEY"),
    ],
)
def test_malformed_key_is_refused_before_any_call(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
    source: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, err = run(capsys, *argv)
    line = one_line(err)
    assert code == failures.EXIT_USAGE
    assert f"the API key from {source} is not a Parapet API key: one looks like pk_" in line
    assert "é" not in line and "BEGIN" not in line and "sk-proj" not in line  # never the key itself


def test_pem_file_as_key_file_names_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = demo_key(tmp_path, PEM.encode())
    code, err = run(capsys, "chat", "hi")
    assert code == failures.EXIT_USAGE and f"the API key from {path} is not a Parapet API key" in one_line(
        err
    )


def test_keys_auth_issues_pass_the_cli_check() -> None:
    # The CLI checks only the shape of auth's format (services/auth/apikeys.py): it must never refuse a real key.
    for _ in range(50):
        _, key = apikeys.generate()
        assert connect.check_key(connect.Credential(key, "test")).api_key == key


@pytest.mark.parametrize(
    ("content", "expected"),
    [(BINARY, "is not UTF-8 text"), (None, "Is a directory"), (b"", "no such file")],
)
def test_policy_file_mistakes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes | None, expected: str
) -> None:
    path = tmp_path / "policy.json"
    if content is None:
        path.mkdir()
    elif content:
        path.write_bytes(content)
    code, err = run(capsys, "policy", "set", "--file", str(path), "--api-key", KEY)
    assert code == failures.EXIT_USAGE and "policy file" in one_line(err) and expected in one_line(err)


def test_questions_file_mistakes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "questions.txt").write_bytes(b"first\n" + BINARY)
    code, err = run(capsys, "jobs", "submit", "questions.txt", "--api-key", KEY)
    assert code == failures.EXIT_USAGE and "questions file questions.txt is not UTF-8 text" in one_line(err)
    code, err = run(capsys, "jobs", "submit", str(tmp_path), "--api-key", KEY)
    assert code == failures.EXIT_USAGE and "Is a directory" in one_line(err)


@pytest.mark.parametrize(
    "argv",
    [
        ["usage", "--since", "99999999d"],
        ["usage", "--until", "9999-12-31T20:00:00-05:00"],
        ["audit", "tail", "--since", "99999999d"],
    ],
)
def test_time_out_of_range(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, err = run(capsys, *argv, "--api-key", KEY)
    assert code == failures.EXIT_USAGE and "is out of range: a time must fall within the years" in one_line(
        err
    )


@pytest.mark.parametrize("days", ["9999999", "99999999999999999999999"])
def test_key_expiry_too_far_is_refused_before_login(capsys: pytest.CaptureFixture[str], days: str) -> None:
    code, err = run(capsys, "keys", "create", "--user", "bot", "--expires-in-days", days, "--api-key", KEY)
    assert code == failures.EXIT_USAGE
    assert (
        one_line(err)
        == f"parapet keys: --expires-in-days {days} is too far ahead: it ends after the year 9999"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["chat", "hi", "--max-tokens", "99999999999"],
        ["jobs", "submit", "q.txt", "--max-tokens", "-1"],
        ["policy", "set", "--retention-days", "99999999999"],
        ["policy", "show", "--version", "99999999999999999999"],
        ["audit", "verify", "--from", "99999999999999999999"],
        ["audit", "verify", "--to", "-1"],
        ["audit", "tail", "-n", "-5"],
    ],
)
def test_numbers_a_request_cannot_hold(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, err = run(capsys, *argv, "--api-key", KEY)
    assert code == failures.EXIT_USAGE and "Traceback" not in err
    assert "must be a whole number from 0 to " in err.strip().splitlines()[-1]


def test_ingest_paths_that_cannot_be_read(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    too_long = "a" * 300 + ".md"
    code, err = run(capsys, "ingest", "missing.md", too_long, "--api-key", KEY)
    assert code == failures.EXIT_PROBLEM_FOUND and "Traceback" not in err
    assert "failed     missing.md: no such file or folder" in err
    assert f"failed     {too_long}: cannot read: File name too long" in err


def test_missing_tls_file(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARAPET_TLS_CA_FILE", "/nonexistent/ca.pem")
    code, err = run(capsys, "chat", "hi", "--api-key", KEY, "--address", "127.0.0.1:1")
    assert code == failures.EXIT_USAGE and "cannot read the TLS file /nonexistent/ca.pem" in one_line(err)


def test_bad_base_port_variable(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARAPET_BASE_PORT", "abc")
    for argv in (["usage", "--api-key", KEY], ["status"]):
        code, err = run(capsys, *argv)
        assert (
            code == failures.EXIT_USAGE
            and "$PARAPET_BASE_PORT must be a port number, not 'abc'" in one_line(err)
        )


def test_service_down(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, err = run(capsys, "chat", "hi", "--api-key", KEY, "--address", f"127.0.0.1:{port}")
    assert code == failures.EXIT_UNREACHABLE and one_line(err).startswith("parapet chat: UNAVAILABLE: ")


def test_ctrl_c(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def interrupted(*_: object, **__: object) -> connect.Session:
        raise KeyboardInterrupt  # what SIGINT raises in the middle of the command

    monkeypatch.setattr(connect.Session, "from_args", interrupted)
    (tmp_path / "doc.md").write_text("# A document\n")
    for argv, name in ((["chat", "hi"], "chat"), (["ingest", "doc.md", "--no-progress"], "ingest")):
        code, err = run(capsys, *argv, "--api-key", KEY)
        assert code == failures.EXIT_INTERRUPTED and one_line(err) == f"parapet {name}: interrupted"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PARAPET_TLS_CA_FILE": "/nonexistent/ca.pem"}, "cannot read the TLS file /nonexistent/ca.pem"),
        ({"PARAPET_TLS_CERT_FILE": "/nonexistent/cert.pem"}, "PARAPET_TLS_CERT_FILE"),
    ],
)
def test_status_with_tls_settings_that_cannot_work(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, err = run(capsys, "status", "--base-port", "1100")
    assert code == failures.EXIT_USAGE and "Traceback" not in err
    assert err.startswith("parapet status: ") and expected in err


@pytest.mark.parametrize("interval", ["nan", "inf", "0", "-1", "soon"])
def test_audit_follow_interval_that_is_no_delay(capsys: pytest.CaptureFixture[str], interval: str) -> None:
    # `nan` passed the `> 0` check and polled the audit service without pause, forever.
    code, err = run(capsys, "audit", "tail", "-f", "--interval", interval, "--api-key", KEY)
    assert code == failures.EXIT_USAGE and "Traceback" not in err
    assert "--interval" in err.strip().splitlines()[-1]


@pytest.mark.parametrize("timeout", ["nan", "inf", "0"])
def test_up_startup_timeout_that_never_ends_or_never_starts(
    capsys: pytest.CaptureFixture[str], timeout: str
) -> None:
    code, err = run(capsys, "up", "--startup-timeout", timeout)
    assert code == failures.EXIT_USAGE and "Traceback" not in err
    assert "--startup-timeout: must be a number of seconds above 0" in err.strip().splitlines()[-1]


def test_a_question_that_is_not_utf8(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Python hands undecodable bytes of argv and of a piped stdin over as lone surrogates, which protobuf
    # cannot encode: a UnicodeEncodeError traceback until 2026-12-06.
    latin1 = "caf\udce9?"  # "café?" typed on a Latin-1 terminal
    code, err = run(capsys, "chat", latin1, "--api-key", KEY, "--address", "127.0.0.1:1")
    assert code == failures.EXIT_USAGE
    assert one_line(err) == "parapet chat: question is not UTF-8 text (a terminal in another encoding?)"

    # A conversation skips that question, says so, and goes on (here: to the end of its input), where its exit
    # code says that a question went unanswered (it was 0 until 2026-12-06).
    piped = io.TextIOWrapper(io.BytesIO(b"caf\xe9?\n"), encoding="utf-8", errors="surrogateescape")
    monkeypatch.setattr(sys, "stdin", piped)
    code, err = run(capsys, "chat", "--api-key", KEY, "--address", "127.0.0.1:1")
    assert code == failures.EXIT_USAGE and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "parapet chat: the question is not UTF-8 text (a terminal or file in another encoding?); skipped"
    )


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["keys", "list", "--user", "caf\udce9"], "--user"),
        (["ingest", "doc.md", "--group", "caf\udce9"], "--group"),
        (["ingest", "doc.md", "--meta", "dish=caf\udce9"], "--meta"),
        (["erase", "caf\udce9", "--reason", "ticket 1", "--yes"], "USER"),
        (["jobs", "submit", "q.txt", "--label", "k=caf\udce9"], "--label"),
    ],
)
def test_an_argument_that_is_not_utf8(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], named: str
) -> None:
    # `keys list` failed with a UnicodeEncodeError traceback, `ingest` with a CancelledError one from its stream.
    (tmp_path / "doc.md").write_text("# A document\n")
    (tmp_path / "q.txt").write_text("A question?\n")
    code, err = run(capsys, *argv, "--api-key", KEY, "--address", "127.0.0.1:1")
    assert code == failures.EXIT_USAGE
    assert one_line(err) == (
        f"parapet {argv[0]}: {named} is not UTF-8 text (a terminal in another encoding?)"
    )


def test_a_questions_file_whose_name_is_not_utf8_is_read(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # File names are paths, not text for a request: the check of arguments leaves them to the command.
    name = os.fsdecode(b"caf\xe9.txt")
    (tmp_path / name).write_text("")
    code, err = run(capsys, "jobs", "submit", name, "--api-key", KEY, "--address", "127.0.0.1:1")
    assert code == failures.EXIT_USAGE and one_line(err).endswith("holds no question")


def test_a_conversation_whose_questions_failed_does_not_exit_0(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `parapet chat < questions > answers` with the gateway down said UNAVAILABLE for each question, then
    # exited 0 at the end of its input, as if every question had its answer.
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(sys, "stdin", io.StringIO("first question\nsecond question\n"))
    code, err = run(capsys, "chat", "--api-key", KEY, "--address", f"127.0.0.1:{port}")
    assert "Traceback" not in err
    failed = [line for line in err.splitlines() if line.startswith("parapet chat: UNAVAILABLE: ")]
    assert len(failed) == 2, err  # each question was tried, the conversation went on after the first
    assert code == failures.EXIT_UNREACHABLE
