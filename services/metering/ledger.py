"""The usage ledger and its outbox: one immutable row per settled request, and its UsageEvent to publish.

Both rows are written by the caller's transaction, so an event exists exactly when its ledger row does.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from parapet.events import usage as usage_events
from parapet.usage.v1 import money_pb2, token_usage_pb2, usage_event_pb2

EVENT_TYPE = "dev.parapet.usage.v1.UsageEvent"
EVENT_SOURCE = "/parapet/metering"


@dataclass(frozen=True)
class UsageRecord:
    """A settled request, as stored in ``usage_ledger`` (the figures of one UsageEvent)."""

    tenant_id: str
    request_id: str
    user_id: str
    api_key_id: str
    reservation_id: str
    feature: str
    model: str
    requested_model: str
    provider: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    estimated: bool
    cost_micros: int
    currency_code: str
    cached: bool
    latency_micros: int
    occur_time: datetime
    labels: dict[str, str] = field(default_factory=dict)
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def same_figures(self, other: UsageRecord) -> bool:
        """True when ``other`` settles the same usage (a retry), whatever its event id and reservation."""
        return all(getattr(self, k) == getattr(other, k) for k in FIGURES)

    def to_event(self) -> usage_event_pb2.UsageEvent:
        occur = timestamp_pb2.Timestamp()
        occur.FromDatetime(self.occur_time)
        return usage_event_pb2.UsageEvent(
            event_id=self.event_id,
            tenant_id=self.tenant_id,
            user_id=self.user_id,
            api_key_id=self.api_key_id,
            feature=self.feature,
            model=self.model,
            provider=self.provider,
            usage=token_usage_pb2.TokenUsage(
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                cached_tokens=self.cached_tokens,
                estimated=self.estimated,
            ),
            cost=money_pb2.Money(currency_code=self.currency_code, amount_micros=self.cost_micros),
            cached=self.cached,
            latency=duration_pb2.Duration(
                seconds=self.latency_micros // 1_000_000, nanos=(self.latency_micros % 1_000_000) * 1000
            ),
            request_id=self.request_id,
            occur_time=occur,
            requested_model=self.requested_model,
            reservation_id=self.reservation_id,
            labels=self.labels,
        )


def event_headers(record: UsageRecord) -> dict[str, str]:
    """CloudEvents 1.0 binary-mode attributes (docs/usage-events.md); the bus adds ``Nats-Msg-Id``."""
    return {
        "ce-specversion": "1.0",
        "ce-id": record.event_id,
        "ce-source": EVENT_SOURCE,
        "ce-type": EVENT_TYPE,
        "ce-time": record.occur_time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "ce-subject": record.tenant_id,
        "content-type": "application/protobuf",
    }


COLUMNS = [
    "event_id",
    "tenant_id",
    "request_id",
    "reservation_id",
    "user_id",
    "api_key_id",
    "feature",
    "model",
    "requested_model",
    "provider",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "estimated",
    "cost_micros",
    "currency_code",
    "cached",
    "latency_micros",
    "occur_time",
]
# The columns a retried Settle must repeat exactly; identity, reservation and timing may differ.
FIGURES = COLUMNS[COLUMNS.index("feature") : COLUMNS.index("cached") + 1]

_INSERT_LEDGER = text(
    f"""
    INSERT INTO usage_ledger ({", ".join(COLUMNS)}, labels)
    VALUES ({", ".join(":" + c for c in COLUMNS)}, CAST(:labels AS jsonb))
    ON CONFLICT (tenant_id, request_id) DO NOTHING
    RETURNING event_id
    """
)

_INSERT_OUTBOX = text(
    """
    INSERT INTO outbox (event_id, subject, payload, headers)
    VALUES (:event_id, :subject, :payload, CAST(:headers AS jsonb))
    """
)


def row_params(record: UsageRecord) -> dict[str, Any]:
    """The ledger row's values: one per column of ``COLUMNS``, and ``labels`` as JSON."""
    params: dict[str, Any] = {c: getattr(record, c) for c in COLUMNS}
    params["labels"] = json.dumps(record.labels, sort_keys=True)
    return params


def outbox_params(record: UsageRecord) -> dict[str, Any]:
    """The outbox row's values: the UsageEvent to publish, its subject and CloudEvents headers."""
    return {
        "event_id": record.event_id,
        "subject": usage_events.subject(record.tenant_id),
        "payload": record.to_event().SerializeToString(),
        "headers": json.dumps(event_headers(record)),
    }


async def append(session: AsyncSession, record: UsageRecord) -> UsageRecord | None:
    """Write the ledger row and its outbox row; None when ``request_id`` is already settled (nothing written)."""
    inserted = (await session.execute(_INSERT_LEDGER, row_params(record))).first()
    if inserted is None:
        return None
    await session.execute(_INSERT_OUTBOX, outbox_params(record))
    return record


async def find(session: AsyncSession, tenant_id: str, request_id: str) -> UsageRecord | None:
    row = (
        (
            await session.execute(
                text(
                    f"SELECT {', '.join(COLUMNS)}, labels FROM usage_ledger "
                    "WHERE tenant_id = :tenant AND request_id = :request"
                ),
                {"tenant": tenant_id, "request": request_id},
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    values = dict(row)
    values["event_id"] = str(values["event_id"])
    return UsageRecord(**values)
