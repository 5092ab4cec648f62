"""Rows to protos."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import timestamp_pb2

from parapet.auth.v1 import api_key_pb2, tenant_pb2, user_pb2

_TENANT_STATES = {"active": tenant_pb2.TENANT_STATE_ACTIVE, "disabled": tenant_pb2.TENANT_STATE_DISABLED}
_USER_STATES = {"active": user_pb2.USER_STATE_ACTIVE, "disabled": user_pb2.USER_STATE_DISABLED}
USER_KINDS = {"person": user_pb2.USER_KIND_PERSON, "service_account": user_pb2.USER_KIND_SERVICE_ACCOUNT}


def _ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def tenant(row: dict[str, Any]) -> tenant_pb2.Tenant:
    return tenant_pb2.Tenant(
        tenant_id=row["tenant_id"],
        display_name=row["display_name"],
        state=_TENANT_STATES[row["state"]],
        create_time=_ts(row["create_time"]),
        update_time=_ts(row["update_time"]),
        disable_time=_ts(row["disable_time"]),
    )


def user(row: dict[str, Any]) -> user_pb2.User:
    return user_pb2.User(
        user_id=row["user_id"],
        display_name=row["display_name"],
        email=row["email"],
        kind=USER_KINDS[row["kind"]],
        roles=row["roles"],
        groups=row["groups"],
        state=_USER_STATES[row["state"]],
        create_time=_ts(row["create_time"]),
        update_time=_ts(row["update_time"]),
    )


def api_key(row: dict[str, Any], now: datetime) -> api_key_pb2.ApiKey:
    if row["revoke_time"] is not None:
        state = api_key_pb2.API_KEY_STATE_REVOKED
    elif row["expire_time"] is not None and row["expire_time"] <= now:
        state = api_key_pb2.API_KEY_STATE_EXPIRED
    else:
        state = api_key_pb2.API_KEY_STATE_ACTIVE
    return api_key_pb2.ApiKey(
        api_key_id=str(row["api_key_id"]),
        display_name=row["display_name"],
        user_id=row["user_id"],
        scopes=row["scopes"],
        prefix="pk_" + row["prefix"],
        state=state,
        expire_time=_ts(row["expire_time"]),
        create_time=_ts(row["create_time"]),
        revoke_time=_ts(row["revoke_time"]),
        last_use_time=_ts(row["last_use_time"]),
    )
