"""What ``parapet up`` prints: one table of endpoints, written for people, stable enough to grep."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from parapet.cli.infra import Backing
from parapet.cli.supervisor import ManagedProcess


def _where(backing: Backing) -> str:
    return f"embedded, log {backing.log_path}" if backing.log_path is not None else "external"


def endpoints_table(home: Path, processes: Sequence[ManagedProcess], database: Backing, nats: Backing) -> str:
    rows = [("SERVICE", "ADDRESS", "PID", "LOG")]
    rows += [(m.spec.name, m.address, str(m.pid), str(m.log_path)) for m in processes]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"parapet is up (home {home})", ""]
    lines += [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
        for row in rows
    ]
    lines += [
        "",
        f"database  {database.url}  ({_where(database)})",
        f"nats      {nats.url}  ({_where(nats)})",
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)
