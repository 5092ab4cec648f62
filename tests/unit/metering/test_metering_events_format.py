"""The UsageEvent and CloudEvents headers built from a ledger row; the usage.read rule."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from parapet.auth.v1 import permission_pb2
from parapet.auth.v1 import tenant_policy_pb2 as tp
from parapet.kit.identity import Principal
from services.metering.access import can_read_usage
from services.metering.ledger import UsageRecord, event_headers

RECORD = UsageRecord(
    tenant_id="acme",
    request_id="r1",
    user_id="alice",
    api_key_id="k1",
    reservation_id="",
    feature="chat",
    model="gpt-4o-mini",
    requested_model="fast",
    provider="openai",
    prompt_tokens=120,
    completion_tokens=30,
    cached_tokens=20,
    estimated=False,
    cost_micros=123_456_789_012,
    currency_code="USD",
    cached=False,
    latency_micros=1_234_567,
    occur_time=datetime(2026, 11, 25, 3, 4, 5, 678_000, tzinfo=UTC),
    labels={"team": "a"},
)


def test_event_carries_exact_integers_and_headers_mirror_it() -> None:
    event = RECORD.to_event()
    assert event.cost.amount_micros == 123_456_789_012 and event.cost.currency_code == "USD"
    assert (event.latency.seconds, event.latency.nanos) == (1, 234_567_000)
    assert event.occur_time.ToDatetime(UTC) == RECORD.occur_time
    headers = event_headers(RECORD)
    assert headers["ce-id"] == event.event_id == RECORD.event_id
    assert headers["ce-time"] == "2026-11-25T03:04:05.678000Z"
    assert headers["ce-subject"] == "acme" and headers["ce-type"] == "dev.parapet.usage.v1.UsageEvent"


def test_same_figures_ignores_event_id_but_not_usage() -> None:
    assert RECORD.same_figures(replace(RECORD, event_id="other"))
    assert not RECORD.same_figures(replace(RECORD, completion_tokens=31))


def test_usage_read_comes_from_resolved_permissions_else_policy_roles_narrowed_by_scopes() -> None:
    policy = tp.TenantPolicy(
        roles=[tp.RoleDefinition(role="analyst", permissions=[permission_pb2.PERMISSION_USAGE_READ])]
    )
    assert can_read_usage(Principal("acme", "a", roles=("analyst",)), policy)
    assert can_read_usage(Principal("acme", "a", scopes=("usage.read",)), policy)
    assert not can_read_usage(Principal("acme", "a", roles=("member",)), policy)
    assert not can_read_usage(Principal("acme", "a", roles=("analyst",)), tp.TenantPolicy())
    # A scoped credential holds no more than its scopes, whatever its roles.
    assert not can_read_usage(Principal("acme", "a", roles=("admin",), scopes=("chat",)), policy)
    # What auth resolved into the token decides, when it is there.
    assert can_read_usage(Principal("acme", "a", roles=("member",), permissions=("usage.read",)), policy)
    assert not can_read_usage(Principal("acme", "a", roles=("analyst",), permissions=("chat",)), policy)
