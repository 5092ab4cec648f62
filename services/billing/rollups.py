"""Rollups in the `billing` schema: applying a batch of UsageEvents exactly once, and reading them back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.usage.v1 import usage_event_pb2

# Per batch, in the caller's transaction: record the event ids (set-wise; ON CONFLICT DO NOTHING RETURNING
# gives back only the ids never seen), then add only those events, summed in memory per rollup key, with one
# upsert. A redelivered or duplicated event finds its id recorded and adds nothing; the ids and the sums
# commit together or not at all.
_RECORD_IDS = text(
    """
    INSERT INTO processed_events (event_id, tenant_id)
    SELECT * FROM unnest(CAST(:event_ids AS uuid[]), CAST(:tenants AS text[]))
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
    """
)

_ADD = text(
    """
    INSERT INTO rollups AS r (tenant_id, day, model, provider, feature, currency_code, request_count,
        prompt_tokens, completion_tokens, cached_tokens, cost_micros, estimated_request_count,
        cached_request_count, last_occur_time, update_time)
    SELECT *, now() FROM unnest(
        CAST(:tenants AS text[]), CAST(:days AS date[]), CAST(:models AS text[]), CAST(:providers AS text[]),
        CAST(:features AS text[]), CAST(:currencies AS text[]), CAST(:requests AS bigint[]),
        CAST(:prompt AS bigint[]), CAST(:completion AS bigint[]), CAST(:cached_tokens AS bigint[]),
        CAST(:cost AS bigint[]), CAST(:estimated AS bigint[]), CAST(:cached AS bigint[]),
        CAST(:last AS timestamptz[]))
    ON CONFLICT (tenant_id, day, model, feature, provider, currency_code) DO UPDATE SET
        request_count = r.request_count + excluded.request_count,
        prompt_tokens = r.prompt_tokens + excluded.prompt_tokens,
        completion_tokens = r.completion_tokens + excluded.completion_tokens,
        cached_tokens = r.cached_tokens + excluded.cached_tokens,
        cost_micros = r.cost_micros + excluded.cost_micros,
        estimated_request_count = r.estimated_request_count + excluded.estimated_request_count,
        cached_request_count = r.cached_request_count + excluded.cached_request_count,
        last_occur_time = greatest(r.last_occur_time, excluded.last_occur_time),
        update_time = excluded.update_time
    """
)

RollupKey = tuple[str, date, str, str, str, str]  # tenant, day, model, provider, feature, currency
_SUMS = ("requests", "prompt", "completion", "cached_tokens", "cost", "estimated", "cached")


async def apply(session: AsyncSession, events: Sequence[usage_event_pb2.UsageEvent]) -> int:
    """Add the events not applied before to their rollups; returns how many were new."""
    unique = {event.event_id: event for event in events}  # a batch may repeat an event
    if not unique:
        return 0
    # In id order, as the rollup rows below in key order: two replicas given overlapping batches in other orders (a
    # redelivery after ack_wait) would otherwise each hold an id the other waits for, a deadlock.
    ids = sorted(unique)
    fresh = await session.execute(
        _RECORD_IDS, {"event_ids": ids, "tenants": [unique[i].tenant_id for i in ids]}
    )
    new = [unique[str(row[0])] for row in fresh]
    sums: dict[RollupKey, list[int]] = {}
    last: dict[RollupKey, datetime] = {}
    for event in new:
        occur = event.occur_time.ToDatetime(UTC)
        key = (
            event.tenant_id,
            occur.date(),
            event.model,
            event.provider,
            event.feature,
            event.cost.currency_code,
        )
        total = sums.setdefault(key, [0] * len(_SUMS))
        usage = event.usage
        for i, value in enumerate(
            (
                1,
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.cached_tokens,
                event.cost.amount_micros,
                int(usage.estimated),
                int(event.cached),
            )
        ):
            total[i] += value
        last[key] = max(last.get(key, occur), occur)
    if sums:
        keys = sorted(sums)  # a stable order: concurrent consumers lock rollup rows in the same order
        columns = ("tenants", "days", "models", "providers", "features", "currencies")
        params: dict[str, Any] = {name: [key[i] for key in keys] for i, name in enumerate(columns)}
        params.update({name: [sums[key][i] for key in keys] for i, name in enumerate(_SUMS)})
        params["last"] = [last[key] for key in keys]
        await session.execute(_ADD, params)
    return len(new)


@dataclass(frozen=True)
class RollupRow:
    day: date
    model: str
    provider: str
    feature: str
    currency_code: str
    request_count: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_micros: int
    estimated_request_count: int
    last_occur_time: datetime
    update_time: datetime
    key_digest: str  # names the rollup within its tenant and day (a page token's position)


# A rollup's key (model, feature, provider, currency) within its tenant and day, in 64 hex digits: a page token holds
# the day and this rather than the key itself, whose four texts may be 256 characters each, far beyond a token's
# length. Hashes of each part, then of the four: no separator a text could contain.
_KEY_DIGEST = (
    "encode(sha256(sha256(convert_to(model, 'UTF8')) || sha256(convert_to(feature, 'UTF8'))"
    " || sha256(convert_to(provider, 'UTF8')) || sha256(convert_to(currency_code, 'UTF8'))), 'hex')"
)
_ORDER = "day, model, feature, provider, currency_code"  # the primary key's order after the tenant
_ROLLUP_COLUMNS = (
    "day, model, provider, feature, currency_code, request_count, prompt_tokens, completion_tokens, "
    f"cached_tokens, cost_micros, estimated_request_count, last_occur_time, update_time, {_KEY_DIGEST}"
)
_KEY_OF = text(
    f"SELECT {_ORDER} FROM rollups WHERE tenant_id = :tenant AND day = :day AND {_KEY_DIGEST} = :digest"
)

Position = tuple[date, str]  # a rollup's day and key digest


def _where(
    tenant: str, start: date | None, end: date | None, model: str, feature: str
) -> tuple[str, dict[str, Any]]:
    clauses = ["tenant_id = :tenant"]
    params: dict[str, Any] = {"tenant": tenant}
    for clause, name, value in (
        ("day >= :start", "start", start),
        ("day < :end", "end", end),
        ("model = :model", "model", model or None),
        ("feature = :feature", "feature", feature or None),
    ):
        if value is not None:
            clauses.append(clause)
            params[name] = value
    return " AND ".join(clauses), params


class UnknownPosition(LookupError):
    """A page token's position names no rollup of the tenant (rollups are never deleted: it was not ours)."""


async def list_rollups(
    session: AsyncSession,
    tenant: str,
    *,
    start: date | None,
    end: date | None,
    model: str,
    feature: str,
    after: Position | None,
    limit: int,
) -> tuple[list[RollupRow], bool]:
    """The rollups after ``after`` in key order, and whether more follow. Keyset paging, not offsets: rollups are
    created all the time (a new model's first request of the day, a late event of an earlier day), and one created
    before an offset moved every later row on, so the next page repeated the last row of the previous one."""
    where, params = _where(tenant, start, end, model, feature)
    if after is not None:
        key = (
            await session.execute(_KEY_OF, {"tenant": tenant, "day": after[0], "digest": after[1]})
        ).one_or_none()
        if key is None:
            raise UnknownPosition(after)
        where += (
            f" AND ({_ORDER}) > (:after_day, :after_model, :after_feature, :after_provider, :after_currency)"
        )
        params.update(
            zip(
                ("after_day", "after_model", "after_feature", "after_provider", "after_currency"),
                key,
                strict=True,
            )
        )
    rows = (
        await session.execute(
            text(f"SELECT {_ROLLUP_COLUMNS} FROM rollups WHERE {where} ORDER BY {_ORDER} LIMIT :limit"),
            {**params, "limit": limit + 1},
        )
    ).all()
    return [RollupRow(*row) for row in rows[:limit]], len(rows) > limit


@dataclass(frozen=True)
class InvoiceLineRow:
    model: str
    feature: str
    currency_code: str
    request_count: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_micros: int
    last_occur_time: datetime


async def invoice_lines(session: AsyncSession, tenant: str, start: date, end: date) -> list[InvoiceLineRow]:
    where, params = _where(tenant, start, end, "", "")
    rows = (
        await session.execute(
            text(
                "SELECT model, feature, currency_code, sum(request_count), sum(prompt_tokens), "
                "sum(completion_tokens), sum(cached_tokens), sum(cost_micros), max(last_occur_time) "
                f"FROM rollups WHERE {where} GROUP BY model, feature, currency_code "
                "ORDER BY model, feature, currency_code"
            ),
            params,
        )
    ).all()
    return [
        InvoiceLineRow(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5]), int(r[6]), int(r[7]), r[8])
        for r in rows
    ]
