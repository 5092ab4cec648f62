"""GetUsage: ledger totals of one tenant over a time range, grouped by the requested dimensions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text

from parapet.kit.database import Database
from parapet.metering.v1 import usage_report_pb2

Dimension = usage_report_pb2.UsageDimension

# Dimension -> (SQL expression, output column). Fixed strings only: nothing from the request reaches the SQL.
DIMENSIONS: dict[int, tuple[str, str]] = {
    Dimension.USAGE_DIMENSION_DAY: ("date_trunc('day', occur_time AT TIME ZONE 'UTC')", "day"),
    Dimension.USAGE_DIMENSION_MONTH: ("date_trunc('month', occur_time AT TIME ZONE 'UTC')", "month"),
    Dimension.USAGE_DIMENSION_MODEL: ("model", "model"),
    Dimension.USAGE_DIMENSION_FEATURE: ("feature", "feature"),
    Dimension.USAGE_DIMENSION_USER: ("user_id", "user_id"),
    Dimension.USAGE_DIMENSION_API_KEY: ("api_key_id", "api_key_id"),
}

_SUMS = """
    count(*) AS request_count,
    coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
    coalesce(sum(completion_tokens), 0) AS completion_tokens,
    coalesce(sum(cached_tokens), 0) AS cached_tokens,
    coalesce(bool_or(estimated), false) AS estimated,
    coalesce(sum(cost_micros), 0) AS cost_micros,
    count(*) FILTER (WHERE cached) AS cached_request_count
"""


@dataclass(frozen=True)
class UsageFilter:
    tenant_id: str
    start: datetime
    end: datetime
    user_id: str = ""
    model: str = ""
    feature: str = ""

    def where(self) -> tuple[str, dict[str, Any]]:
        clauses = ["tenant_id = :tenant", "occur_time >= :start", "occur_time < :end"]
        params: dict[str, Any] = {"tenant": self.tenant_id, "start": self.start, "end": self.end}
        for column in ("user_id", "model", "feature"):
            value = getattr(self, column)
            if value:
                clauses.append(f"{column} = :{column}")
                params[column] = value
        return " AND ".join(clauses), params


# A group's key as text, per output column, for its digest: the day or month as a date (its time is midnight), the
# others as they are.
_KEY_TEXT = {"day": "to_char({}.day, 'YYYY-MM-DD')", "month": "to_char({}.month, 'YYYY-MM-DD')"}


def _key_digest(names: Sequence[str], alias: str) -> str:
    """SQL naming a group (a row of ``alias``) within its query: SHA-256 over the SHA-256 of each key (a page
    token's position; the keys themselves, up to four texts of 256 characters, would not fit a token)."""
    texts = [_KEY_TEXT.get(name, "{}." + name).format(alias) for name in names]
    parts = " || ".join(f"sha256(convert_to({key}, 'UTF8'))" for key in texts)
    return f"encode(sha256({parts}), 'hex')"


class UnknownPosition(Exception):
    """A page token's digest names no group of the query."""


async def query(
    database: Database, usage_filter: UsageFilter, group_by: Sequence[int], after: str | None, limit: int
) -> tuple[list[dict[str, Any]], dict[str, Any], bool]:
    """(aggregates of the page, total over everything, whether more aggregates follow).

    Pages go by keyset: ``after`` is the key digest (``key_digest`` of a row) of the last group of the previous
    page, and the page holds the groups ordered after it. Offsets, until 2026-12-06, moved when a group appeared
    before the position reached (a new user's first request): the next page repeated a group, which a client
    listing per user counted twice. A group that appears before the position reached is not in that listing;
    one that appears after it is. Raises ``UnknownPosition`` for a digest that names no group."""
    where, params = usage_filter.where()
    async with database.session() as session:
        total = (
            (await session.execute(text(f"SELECT {_SUMS} FROM usage_ledger WHERE {where}"), params))
            .mappings()
            .one()
        )
        if not group_by:
            return [dict(total)] if total["request_count"] else [], dict(total), False
        columns = [DIMENSIONS[d] for d in group_by]
        names = [name for _, name in columns]
        select = ", ".join(f"{expression} AS {name}" for expression, name in columns)
        keys = ", ".join(f"g.{name}" for name in names)
        digest, cursor_digest = _key_digest(names, "g"), _key_digest(names, "c")
        positions = ", ".join(str(i + 1) for i in range(len(columns)))
        grouped = f"WITH g AS (SELECT {select}, {_SUMS} FROM usage_ledger WHERE {where} GROUP BY {positions})"
        cursor = ", ".join(f"c.{name}" for name in names)
        after_clause = (
            f"WHERE ({keys}) > (SELECT {cursor} FROM g AS c WHERE {cursor_digest} = :after)" if after else ""
        )
        rows = (
            (
                await session.execute(
                    text(
                        f"{grouped} SELECT g.*, {digest} AS key_digest FROM g {after_clause} "
                        f"ORDER BY {keys} LIMIT :limit"
                    ),
                    {**params, "after": after, "limit": limit + 1},
                )
            )
            .mappings()
            .all()
        )
        if after and not rows:
            # The last page, or a position that names no group: the ledger never loses one, so only a token that
            # is not ours does.
            found = await session.execute(
                text(f"{grouped} SELECT 1 FROM g WHERE {digest} = :after"), {**params, "after": after}
            )
            if found.first() is None:
                raise UnknownPosition(after)
    page = [dict(r) for r in rows[:limit]]
    return page, dict(total), len(rows) > limit
