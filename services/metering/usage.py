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


async def query(
    database: Database, usage_filter: UsageFilter, group_by: Sequence[int], offset: int, limit: int
) -> tuple[list[dict[str, Any]], dict[str, Any], bool]:
    """(aggregates of the page, total over everything, whether more aggregates follow)."""
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
        select = ", ".join(f"{expression} AS {name}" for expression, name in columns)
        keys = ", ".join(str(i + 1) for i in range(len(columns)))
        rows = (
            (
                await session.execute(
                    text(
                        f"SELECT {select}, {_SUMS} FROM usage_ledger WHERE {where} "
                        f"GROUP BY {keys} ORDER BY {keys} OFFSET :offset LIMIT :limit"
                    ),
                    {**params, "offset": offset, "limit": limit + 1},
                )
            )
            .mappings()
            .all()
        )
    page = [dict(r) for r in rows[:limit]]
    return page, dict(total), len(rows) > limit
