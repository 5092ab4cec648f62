"""Shared setup of the metering and billing integration tests: settings, policies, identities, stubs."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from parapet.auth.v1 import tenant_policy_pb2
from parapet.kit.identity import Principal
from parapet.kit.testing import TestKeys
from parapet.usage.v1 import money_pb2
from services.billing.settings import BillingSettings
from services.metering.settings import MeteringSettings

FAST = {
    "port": 0,
    "health_interval_seconds": 0.2,
    "health_probe_timeout_seconds": 0.5,
    "shutdown_grace_seconds": 1.0,
    "nats_reconnect_wait_seconds": 0.2,
}


def new_tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def usd(micros: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="USD", amount_micros=micros)


def write_policies(path: Path, policies: dict[str, tenant_policy_pb2.TenantPolicy]) -> Path:
    path.write_text(json.dumps({t: json_format.MessageToDict(p) for t, p in policies.items()}))
    return path


def write_jwks(path: Path, keys: TestKeys) -> Path:
    path.write_text(json.dumps(keys.jwks()))
    return path


def metering_settings(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str, policy_file: Path, **overrides: Any
) -> MeteringSettings:
    values: dict[str, Any] = {
        **FAST,
        "database_url": database_url,
        "nats_url": nats_url,
        "identity_jwks_file": write_jwks(tmp_path / "jwks.json", keys),
        "policy_file": policy_file,
        "relay_interval_seconds": 0.05,
        "sweep_interval_seconds": 0.2,
    }
    values.update(overrides)
    return MeteringSettings(**values)


def billing_settings(
    tmp_path: Path, keys: TestKeys, database_url: str, nats_url: str, policy_file: Path, **overrides: Any
) -> BillingSettings:
    values: dict[str, Any] = {
        **FAST,
        "database_url": database_url,
        "nats_url": nats_url,
        "identity_jwks_file": write_jwks(tmp_path / "jwks.json", keys),
        "policy_file": policy_file,
    }
    values.update(overrides)
    return BillingSettings(**values)


def caller(
    keys: TestKeys, tenant: str, subject: str = "alice", *, api_key_id: str = "", roles: tuple[str, ...] = ()
) -> tuple[tuple[str, str], ...]:
    principal = Principal(
        tenant_id=tenant,
        subject=subject,
        roles=roles,
        api_key_id=api_key_id,
        credential_type="api_key" if api_key_id else "",
    )
    return keys.metadata(principal)


def reader_policy(**fields: Any) -> tenant_policy_pb2.TenantPolicy:
    """A policy whose role "analyst" grants usage.read, plus ``fields`` (budgets, rate_limits)."""
    from parapet.auth.v1 import permission_pb2

    return tenant_policy_pb2.TenantPolicy(
        roles=[
            tenant_policy_pb2.RoleDefinition(role="analyst", permissions=[permission_pb2.PERMISSION_USAGE_READ])
        ],
        **fields,
    )
