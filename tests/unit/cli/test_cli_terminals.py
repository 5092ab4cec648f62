"""Output to a terminal that cannot show every character (an ASCII or Latin-1 locale, ``PYTHONIOENCODING``):
answers, names and JSON reach it without a traceback; JSON keeps every character as a ``\\u`` escape.

Each case runs the command as its own process, so the interpreter picks its stream encodings as it would for a
person: none needs a running suite (an unsupported file is reported before any call).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parapet.cli import printing

NAME = "café-menu-😀.pdf"  # not ASCII, and the emoji is not Latin-1 either


def parapet(*argv: str, encoding: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARAPET_")}
    env.update({"PYTHONIOENCODING": encoding, "PYTHONPATH": os.pathsep.join(sys.path)})
    return subprocess.run(
        [sys.executable, "-m", "parapet.cli", *argv], env=env, cwd=cwd, capture_output=True, timeout=60
    )


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_json_to_a_terminal_that_cannot_show_every_character(tmp_path: Path, encoding: str) -> None:
    (tmp_path / NAME).write_text("not a supported type")
    done = parapet(
        "ingest",
        NAME,
        "--json",
        "--api-key",
        "pk_" + "a" * 12 + "_" + "b" * 43,
        encoding=encoding,
        cwd=tmp_path,
    )
    assert b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
    assert done.returncode == 4  # the file is refused: a problem found, reported in the JSON
    (problem,) = json.loads(done.stdout.decode(encoding))["problems"]
    assert problem["document"] == NAME  # every character kept, as \u escapes


def test_text_to_a_terminal_that_cannot_show_every_character(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = io.BytesIO()
    stdout = io.TextIOWrapper(raw, encoding="ascii")  # strict, as Python opens an ASCII terminal
    monkeypatch.setattr(sys, "stdout", stdout)
    printing.tolerate_unencodable_output()
    print("crème brûlée 😀", flush=True)
    assert raw.getvalue() == b"cr?me br?l?e ?\n"
