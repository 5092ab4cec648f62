"""Argument parsing of the parapet command and its defaults."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from parapet.cli import up
from parapet.cli.main import build_parser, main


def test_up_defaults() -> None:
    args = build_parser().parse_args(["up"])
    assert args.command == "up"
    assert args.home is None and args.base_port is None and args.only is None
    assert args.startup_timeout == 60
    assert args.apps_package == "services"


def test_up_options() -> None:
    args = build_parser().parse_args(
        ["up", "--home", "/x", "--base-port", "50000", "--only", "gateway, auth,"]
    )
    assert args.home == Path("/x")
    assert args.base_port == 50000
    assert args.only == ["gateway", "auth"]


def test_serve_needs_a_service() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve"])
    assert build_parser().parse_args(["serve", "billing"]).service == "billing"


def test_a_command_is_required() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([])


def test_serve_unknown_service_lists_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "nope"]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "gateway" in err and "billing" in err


def test_up_unknown_only_is_an_error_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["up", "--home", str(tmp_path), "--only", "gateway,nope"]) == 2
    assert "'nope'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_home_and_base_port_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert up.resolve_home(None, {}) == tmp_path / ".parapet"
    assert up.resolve_home(None, {"PARAPET_HOME": "/srv/p"}) == Path("/srv/p")
    assert up.resolve_home(Path("h"), {"PARAPET_HOME": "/srv/p"}) == tmp_path / "h"
    assert up.resolve_base_port(None, {}) == 47100
    assert up.resolve_base_port(None, {"PARAPET_BASE_PORT": "50000"}) == 50000
    assert up.resolve_base_port(51000, {"PARAPET_BASE_PORT": "50000"}) == 51000


def test_services_start_through_this_interpreter_as_a_container_would() -> None:
    assert up.serve_argv("audit", "services") == [sys.executable, "-m", "parapet.cli", "serve", "audit"]
    assert up.serve_argv("audit", "fakes")[-2:] == ["--apps-package", "fakes"]
