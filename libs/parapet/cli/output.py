"""What ``parapet up`` prints: one table of endpoints, written for people, stable enough to grep."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from parapet.cli.infra import Backing
from parapet.cli.layout import HomeLayout
from parapet.cli.supervisor import ManagedProcess
from parapet.kit.redact import redact_url


def _where(backing: Backing) -> str:
    return f"embedded, log {backing.log_path}" if backing.log_path is not None else "external"


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell (the last one is not padded, so lines carry no trailing blanks)."""
    table = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)), row[-1]])
        for row in table
    )


def endpoints_table(home: Path, processes: Sequence[ManagedProcess], database: Backing, nats: Backing) -> str:
    rows = [[m.spec.name, m.address, str(m.pid), str(m.log_path)] for m in processes]
    lines = [f"parapet is up (home {home})", "", render_table(["SERVICE", "ADDRESS", "PID", "LOG"], rows)]
    lines += [
        "",
        f"database  {redact_url(database.url)}  ({_where(database)})",
        f"nats      {redact_url(nats.url)}  ({_where(nats)})",
    ]
    operator_key = HomeLayout(home).operator_key_file
    if operator_key.exists():  # auth writes it at its first start; shown by path, never by content
        lines.append(
            f"operator  API key in {operator_key} (the platform operator's; `parapet tenants` uses it)"
        )
    lines += ["", "Ctrl-C stops everything."]
    return "\n".join(lines)
