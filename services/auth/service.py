"""The AuthService servicer: Authenticate, Authorize, GetJwks, GetEffectivePolicy, IssueDelegatedToken."""

from __future__ import annotations

from typing import Any

import grpc.aio
from google.protobuf import duration_pb2

from parapet.auth.v1 import auth_service_pb2, auth_service_pb2_grpc, signing_key_pb2
from parapet.kit.context import current_rpc, require_principal
from parapet.kit.errors import InvalidArgument, NotFound
from services.auth import permissions
from services.auth.access import Access
from services.auth.authenticator import Authenticator
from services.auth.delegation import Delegator

JWKS_MAX_AGE_SECONDS = 300
pb = auth_service_pb2


def client_of() -> str:
    """The address failures are throttled by: the end client the gateway names, else the peer (the kit
    read both when the call began)."""
    info = current_rpc()
    return info.client_address() if info is not None else "unknown"


class AuthServicer(auth_service_pb2_grpc.AuthServiceServicer):
    def __init__(
        self,
        authenticator: Authenticator,
        access: Access,
        jwks: list[dict[str, Any]],
        delegator: Delegator,
    ) -> None:
        self._authenticator = authenticator
        self._access = access
        self._delegator = delegator
        self._jwks = pb.GetJwksResponse(
            keys=[
                signing_key_pb2.JsonWebKey(**{k: v for k, v in key.items() if k in _JWK_FIELDS})
                for key in jwks
            ],
            max_age=duration_pb2.Duration(seconds=JWKS_MAX_AGE_SECONDS),
        )

    async def Authenticate(
        self, request: pb.AuthenticateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AuthenticateResponse:
        issued = await self._authenticator.authenticate(
            api_key=request.api_key, oidc_token=request.oidc_token, client=client_of()
        )
        return issued.authenticate_response

    async def Authorize(
        self, request: pb.AuthorizeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AuthorizeResponse:
        principal = require_principal()
        if request.permission not in permissions.NAMES:
            raise InvalidArgument("permission is required", field_violations=[("permission", "must be set")])
        if request.max_tokens < 0:
            raise InvalidArgument(
                "max_tokens is invalid", field_violations=[("max_tokens", "must not be negative")]
            )
        held, view = await self._access.permissions_of(principal)
        version = view.policy.version if view is not None else 0

        def decision(reason: str) -> pb.AuthorizeResponse:
            return pb.AuthorizeResponse(allowed=reason == "ALLOWED", reason=reason, policy_version=version)

        if view is not None and view.state != "active":
            return decision("TENANT_DISABLED")
        name = permissions.name(request.permission)
        if principal.scopes and name not in principal.scopes:
            return decision("SCOPE_EXCLUDED")
        if request.permission not in held:
            return decision("PERMISSION_MISSING")
        assert view is not None  # held is empty without a view
        models = view.policy.models
        if request.model and models.allowed_models and request.model not in models.allowed_models:
            return decision("MODEL_NOT_ALLOWED")
        if 0 < models.max_tokens_per_request < request.max_tokens:
            return decision("MAX_TOKENS_EXCEEDED")
        return decision("ALLOWED")

    async def IssueDelegatedToken(
        self, request: pb.IssueDelegatedTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.IssueDelegatedTokenResponse:
        issued = await self._delegator.issue(
            require_principal(), request.tenant_id, request.subject, request.api_key_id
        )
        return issued.delegated_response()

    async def GetJwks(
        self, request: pb.GetJwksRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetJwksResponse:
        return self._jwks

    async def GetEffectivePolicy(
        self, request: pb.GetEffectivePolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetEffectivePolicyResponse:
        principal = require_principal()
        view = await self._access.view(principal.tenant_id)
        if view is None:
            raise NotFound(
                "the caller's tenant does not exist", metadata={"resource": f"tenants/{principal.tenant_id}"}
            )
        if request.known_version and request.known_version == view.policy.version:
            return pb.GetEffectivePolicyResponse(not_modified=True)
        return pb.GetEffectivePolicyResponse(policy=view.policy)


_JWK_FIELDS = frozenset({"kid", "kty", "crv", "x", "alg", "use"})
