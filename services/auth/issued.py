"""An internal token issued for a credential, and its wire form.

A warm Authenticate hands back the token issued for its credential until the identity cache entry expires
(``PARAPET_AUTH_CACHE_SECONDS``) or half the token's lifetime has passed, so the response message is built
once per token and reused: building it per call (the principal's message, the
timestamp, the response) was about a quarter of a warm call's server CPU (`python -m bench
auth_authenticate`, docs/auth.md). Messages handed to grpc are only serialized, never changed, so sharing
one between concurrent calls is safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from google.protobuf import timestamp_pb2

from parapet.auth.v1 import auth_service_pb2
from parapet.kit.identity import Principal


@dataclass(frozen=True)
class Issued:
    """A signed internal token with what it says: the principal and the policy version it was issued under."""

    token: str
    expires: float
    principal: Principal
    policy_version: int

    def _wire_fields(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "expire_time": timestamp_pb2.Timestamp(seconds=int(self.expires)),
            "principal": self.principal.to_proto(),
            "policy_version": self.policy_version,
        }

    @cached_property
    def authenticate_response(self) -> auth_service_pb2.AuthenticateResponse:
        return auth_service_pb2.AuthenticateResponse(**self._wire_fields())

    def delegated_response(self) -> auth_service_pb2.IssueDelegatedTokenResponse:
        return auth_service_pb2.IssueDelegatedTokenResponse(**self._wire_fields())
