"""Reading a tenant's records in keyset chunks bounded by bytes as well as by rows.

A record may hold up to 3 MiB (canonical.MAX_RECORD_BYTES), bodies included, so a chunk of a few hundred rows
could be hundreds of megabytes, held twice in the service (the driver's result and the Python values): past the
audit pod's memory limit for one call. A chunk therefore ends at ``limit`` rows or once the rows before it add up
to ``budget`` bytes, whichever comes first (a row larger than the budget alone). The sizes are what PostgreSQL
knows without reading the values (``octet_length`` of a TOASTed value reads its header), so rows cut off are not
read either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# The columns the cut adds to every row; callers ignore them.
EXTRA_COLUMNS = ("chunk_bytes", "chunk_before", "chunk_rows")


def bounded_sql(inner: str, order: str) -> str:
    """``inner``, a SELECT that ends with ``ORDER BY {order} LIMIT :limit`` and has a ``chunk_bytes`` column (the
    row's size), cut after the rows that come within ``:budget`` bytes (at least one row)."""
    return (
        "SELECT * FROM ("
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
