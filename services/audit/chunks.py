"""Reading a tenant's records in keyset chunks bounded by bytes as well as by rows.

A record may hold up to 3 MiB (canonical.MAX_RECORD_BYTES), bodies included, so a chunk of a few hundred rows
could be hundreds of megabytes, held twice in the service (the driver's result and the Python values): past the
audit pod's memory limit for one call. A chunk therefore ends at ``limit`` rows or once the rows before it add up
to ``budget`` bytes, whichever comes first (a row larger than the budget alone). The sizes are what PostgreSQL
knows without reading the values (``octet_length`` of a TOASTed value reads its header), and the rows pass the
window that cuts them with their large values still in TOAST (a sort or window stores the pointers), so rows cut
off are not read either. That holds only for columns the inner SELECT passes through untouched: an expression on a
large value there (a hash of a body) is computed for every row the LIMIT lets through, cut or not; it belongs in
``columns``, computed after the cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# The columns the cut adds to every row; callers ignore them.
EXTRA_COLUMNS = ("chunk_bytes", "chunk_before", "chunk_rows")


def bounded_sql(inner: str, order: str, columns: str = "*") -> str:
    """``inner``, a SELECT that ends with ``ORDER BY {order} LIMIT :limit`` and has a ``chunk_bytes`` column (the
    row's size), cut after the rows that come within ``:budget`` bytes (at least one row). ``columns`` is what the
    statement returns of each row kept, evaluated after the cut: the default returns ``inner``'s columns and
    ``EXTRA_COLUMNS``; a list of its own must name ``chunk_rows`` (``chunk`` reads it)."""
    return (
        f"SELECT {columns} FROM ("
        " SELECT page.*, sum(page.chunk_bytes) OVER w - page.chunk_bytes AS chunk_before,"
        " count(*) OVER () AS chunk_rows"
        f" FROM ({inner}) AS page WINDOW w AS (ORDER BY {order} ROWS UNBOUNDED PRECEDING)"
        f") AS cut WHERE chunk_before < :budget ORDER BY {order}"
    )


@dataclass(frozen=True)
class Chunk:
    rows: Sequence[Any]
    exhausted: bool  # no matching row comes after these


def chunk(rows: Sequence[Any], limit: int) -> Chunk:
    """The rows of one ``bounded_sql`` statement run with ``limit``, and whether the query has no more."""
    if not rows:
        return Chunk(rows, True)
    fetched = int(rows[0].chunk_rows)  # rows the LIMIT let through, before the cut by bytes
    return Chunk(rows, fetched < limit and len(rows) == fetched)
