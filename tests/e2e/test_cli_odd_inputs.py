"""End to end: ``parapet ingest`` of the folders people actually have, against a whole suite from ``parapet up``.

A file whose name is not UTF-8 (an old archive's Latin-1 name), a symbolic link loop, a dangling link and an
empty folder sit beside ordinary documents: each odd entry is its own problem or skipped, the rest is stored.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.support import Launcher
from tests.e2e.test_cli_commands import parapet, suite  # noqa: F401 - suite is this module's fixture too

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]


def test_ingest_reports_a_name_that_is_not_utf8_and_stores_the_rest(suite: Launcher, tmp_path: Path) -> None:  # noqa: F811
    folder = tmp_path / "odd"
    (folder / "empty").mkdir(parents=True)
    (folder / "guide.md").write_text("# Guide\n\nThe staff canteen opens at 11:30 on weekdays.\n")
    latin1 = os.fsencode(folder) + b"/caf\xe9-menu.md"  # "café" in Latin-1: not a UTF-8 name
    Path(os.fsdecode(latin1)).write_text("# Menu\n\nSoup of the day.\n")
    (folder / "loop").symlink_to(folder)  # a folder that contains itself
    (folder / "dangling.md").symlink_to(folder / "gone.md")

    done = parapet(suite, "ingest", str(folder), "--prefix", "odd/")
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 4, done.stderr
    assert "created    odd/guide.md" in done.stdout
    assert "caf\\xe9-menu.md: its name is not UTF-8" in done.stderr
    assert "1 documents stored (1 created, 0 updated, 0 unchanged), 1 failed" in done.stdout
