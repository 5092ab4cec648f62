"""``parapet usage replay``: parsed beside the usage report without changing it, and a person's mistakes
refused before any call (one line, exit 2). The command against real servers is in
tests/integration/metering/test_metering_replay_cli.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from parapet.cli import failures, usage
from parapet.cli.main import build_parser, main

KEY = "pk_abcdefghijkl_" + "B" * 43  # the shape auth issues; no service ever sees it here


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("PARAPET_API_KEY", "PARAPET_BASE_PORT", "PARAPET_METERING_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PARAPET_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


def test_the_usage_report_parses_as_before() -> None:
    args = build_parser().parse_args(["usage", "--since", "7d", "--by", "day"])
    assert (args.since, args.by, args.execute, args.usage_action) == ("7d", ["day"], usage.execute, None)
    assert build_parser().parse_args(["usage"]).since == "month"


def test_replay_takes_its_own_since_and_the_connection_flags() -> None:
    args = build_parser().parse_args(
        ["usage", "replay", "--since", "2h", "--address", "127.0.0.1:1", "--api-key", KEY, "--json"]
    )
    assert args.execute is usage.execute_replay
    assert (args.since, args.address, args.api_key, args.json, args.service) == (
        "2h",
        "127.0.0.1:1",
        KEY,
        True,
        "metering",
    )


def test_replay_without_since_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["usage", "replay"])
    assert exited.value.code == failures.EXIT_USAGE
    assert "--since" in capsys.readouterr().err


@pytest.mark.parametrize("since", ["yesterday", "99999999d"])
def test_replay_with_a_time_it_cannot_read_fails_before_any_call(
    capsys: pytest.CaptureFixture[str], since: str
) -> None:
    # The address is a closed port: had the command called, it would have failed with exit 3 instead.
    code = main(["usage", "replay", "--since", since, "--api-key", KEY, "--address", "127.0.0.1:9"])
    err = capsys.readouterr().err.strip()
    assert code == failures.EXIT_USAGE
    assert err.startswith("parapet usage: ") and "\n" not in err and since in err
