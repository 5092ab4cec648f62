"""Folders given to ``parapet ingest`` that cannot be read in full: each part that cannot is a problem of its own,
reported, never silently left out (the rest is still ingested).

Permissions do not stop root, so as root the walk runs as ``nobody`` in a process of its own; as anybody else it
runs the same way as the current user.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import REPO

WALK = (
    "import json, sys; from pathlib import Path; from parapet.cli import documents; "
    "print(json.dumps([[c.document_id, c.problem] for c in documents.find([Path(sys.argv[1])], 'p/')]))"
)


@pytest.fixture
def folder() -> Iterator[Path]:
    # Outside pytest's temporary root, which is private to root: nobody must reach it.
    root = Path(tempfile.mkdtemp(prefix="parapet-ingest-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        for path in (root / "locked", root / "listed-only"):
            if path.exists():
                path.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


def candidates(folder: Path) -> list[list[str]]:
    argv = [sys.executable, "-c", WALK, str(folder)]
    if os.geteuid() == 0:
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    found: list[list[str]] = json.loads(done.stdout)
    return found


def test_a_folder_that_cannot_be_read_is_reported_and_the_rest_found(folder: Path) -> None:
    (folder / "open").mkdir()
    (folder / "open" / "a.md").write_text("# A\n")
    (folder / "locked").mkdir()
    (folder / "locked" / "b.md").write_text("# B\n")
    (folder / "locked").chmod(0o700)  # not even listable by others
    (folder / "listed-only").mkdir()
    (folder / "listed-only" / "c.md").write_text("# C\n")
    (folder / "listed-only").chmod(0o744)  # others may list it, but not reach what it holds
    found = candidates(folder)
    assert ["p/open/a.md", ""] in found
    problems = {document_id: problem for document_id, problem in found if problem}
    assert problems.get("p/locked", "").startswith("cannot read the folder: Permission denied"), found
    assert problems.get("p/listed-only/c.md", "").startswith("cannot read: Permission denied"), found
    assert not any(document_id.startswith("p/locked/") for document_id, _ in found)
