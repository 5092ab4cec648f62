"""Settle's common case as ONE SQL statement: an active reservation of this request, settled for the first time.

End the reservation, append the ledger row and its outbox row, and move the reservation's holds to spend on
its budget counters, in one statement inside one transaction on the raw psycopg connection. The ORM path
(``settlement.settle``) takes five statements and a session for the same work, and was most of metering's
CPU per chat (the gateway benchmark's CPU table). Everything else goes to that path, which stays the one
place for the rules of the unusual cases: a repeated request_id, a reservation that is unknown, already
ended, expired or another request's, or no reservation at all. When the statement cannot settle, it writes
nothing (the reservation is matched first, and the transaction is rolled back if the ledger row already
existed), and the caller runs the ORM path.

The transaction commits synchronously, like the ORM path's: a settled request is a fact (reserve_sql says
why Reserve alone may commit asynchronously).
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from services.metering.ledger import COLUMNS, UsageRecord, outbox_params, row_params

# The ledger's column types: every value inserted through SELECT is cast, so PostgreSQL never has to guess a
# column's type from a parameter (the WHERE clauses compare with typed columns; psycopg sends ints typed).
_TYPES = {
    "event_id": "uuid",
    "prompt_tokens": "bigint",
    "completion_tokens": "bigint",
    "cached_tokens": "bigint",
    "estimated": "boolean",
    "cost_micros": "bigint",
    "cached": "boolean",
    "latency_micros": "bigint",
    "occur_time": "timestamptz",
}
_VALUES = ", ".join(f"CAST(%({c})s AS {_TYPES.get(c, 'text')})" for c in COLUMNS)

SETTLE = f"""
WITH r AS (
    UPDATE reservations SET state = 'settled', end_time = now(), release_reason = ''
    WHERE tenant_id = %(tenant_id)s AND reservation_id = CAST(%(reservation_id)s AS uuid)
      AND request_id = %(request_id)s AND user_id = %(user_id)s AND state = 'active'
    RETURNING reservation_id, request_id, state, reserved_tokens, reserved_micros, currency_code,
        create_time, expire_time, end_time, holds
), l AS (
    INSERT INTO usage_ledger ({", ".join(COLUMNS)}, labels)
    SELECT {_VALUES}, CAST(%(labels)s AS jsonb) FROM r
    ON CONFLICT (tenant_id, request_id) DO NOTHING
    RETURNING event_id
), o AS (
    INSERT INTO outbox (event_id, subject, payload, headers)
    SELECT event_id, %(subject)s, %(payload)s, CAST(%(headers)s AS jsonb) FROM l
), m AS (
    -- Holds are stored in the order applicable_budgets sorts them, the order Reserve locks counters in; a
    -- plan that visits them otherwise can deadlock with a Reserve, and the caller then takes the statements
    -- path (with its retries).
    UPDATE budget_counters AS c
    SET reserved = c.reserved - (h.value ->> 'amount')::bigint,
        used = c.used + CASE WHEN h.value ->> 'unit' = 'tokens' THEN %(spent_tokens)s ELSE %(spent_micros)s END
    FROM r, jsonb_array_elements(r.holds) AS h
    WHERE EXISTS (SELECT 1 FROM l)
      AND c.tenant_id = %(tenant_id)s AND c.budget_id = h.value ->> 'budget_id'
      AND c.scope_key = h.value ->> 'scope_key' AND c.unit = h.value ->> 'unit'
      AND c.window_start = (h.value ->> 'window_start')::timestamptz
)
SELECT r.reservation_id, r.request_id, r.state, r.reserved_tokens, r.reserved_micros, r.currency_code,
       r.create_time, r.expire_time, r.end_time, r.holds, EXISTS (SELECT 1 FROM l)
FROM r
"""


class _Missed(Exception):
    """The reservation matched but the ledger already held the request: roll back, take the ORM path."""


def _params(record: UsageRecord) -> dict[str, Any]:
    # outbox_params repeats event_id with the same value as row_params: one parameter serves both rows.
    return {
        **row_params(record),
        **outbox_params(record),
        "spent_tokens": record.total_tokens,
        "spent_micros": record.cost_micros,
    }


async def execute(connection: AsyncConnection[Any], record: UsageRecord) -> tuple[Any, ...] | None:
    """The settled reservation's columns, or None when this statement does not apply (nothing written).

    ``connection`` is in autocommit mode; the statement runs in a transaction of its own."""
    try:
        async with connection.transaction():
            cursor = await connection.execute(SETTLE, _params(record))
            row = await cursor.fetchone()
            if row is not None and not row[10]:
                raise _Missed
    except _Missed:
        return None
    return None if row is None else tuple(row[:10])
